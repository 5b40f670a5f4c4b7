//! Image decoding and vision-tower preprocessing, matching the reference Python pipelines
//! (PIL + transformers' PIL image processors) number for number.
//!
//! ```text
//! file ──load_image──▶ RgbImage ──ImageProcessor::preprocess──▶ PixelValues [3, H, W] f32
//!                                  (expand_to_square → resize_bicubic → centre crop →
//!                                   ×rescale_factor → (x − mean) / std)
//! ```
//!
//! # Decoding ([`load_image`], [`decode_image`])
//! JPEG, PNG, GIF (first frame), BMP and WebP, recognised by content (not by file name):
//! JPEG through our own decoder (`jpeg/`), the others through the `image` crate. Every failure is an [`Error::Image`](crate::Error::Image)
//! naming the file, with a [`ImageErrorKind`](crate::error::ImageErrorKind): `Corrupt`
//! (damaged, truncated or empty data), `Unsupported` (another format, or not an image at
//! all), `TooLarge` (over [`DecodeLimits`]: 16384 pixels a side and 1 GiB decoded by
//! default, checked from the header before any pixel is decoded, so a decompression bomb
//! is refused instead of exhausting memory). A panic inside a decoder is caught and
//! reported as `Corrupt`.
//!
//! Conversion to RGB8 is what the reference pipelines' `Image.open(f).convert("RGB")` does,
//! with two deliberate differences:
//! - alpha is dropped, not composited (like `convert("RGB")`, which is what MobileVLM,
//!   LLaVA and Imp feed the model); grey and grey+alpha are replicated to RGB; palette
//!   images are expanded (a tRNS transparency is dropped with the alpha); CMYK JPEGs are
//!   converted to RGB;
//! - **deliberate**: the EXIF orientation is applied, so phone photos come upright. PIL's
//!   plain `open().convert("RGB")` ignores it and would feed the model a rotated photo; our
//!   output equals `ImageOps.exif_transpose(img).convert("RGB")`;
//! - **deliberate**: 16-bit images are scaled to 8 bits with rounding (`round(v / 257)`).
//!   PIL's `convert("RGB")` of a 16-bit grey image clips every value over 255 to white.
//!
//! ICC profiles are ignored (as by `convert("RGB")`). A palette image's transparent colour
//! is kept as a colour: transformers 5's processors, handed the PIL image straight after
//! `convert("RGB")`, would composite it onto white (transformers 4, which the reference
//! repos run, and MobileVLM's `expand2square` both leave it as is). Lossless formats decode
//! identically to PIL, and so do JPEGs: the JPEG decoder reproduces libjpeg-turbo with
//! PIL's settings (accurate integer IDCT, fancy upsampling, libjpeg's colour tables, block
//! smoothing of incompletely refined progressive files, PIL's CMYK conversion, libjpeg's
//! handling of damaged entropy-coded data), bit for bit on every layout we test (see
//! `jpeg/mod.rs` for what is supported and the one kind of damaged file PIL accepts and we
//! refuse). Arithmetic-coded, 12-bit and lossless JPEGs are `Unsupported`.
//!
//! # Preprocessing
//! [`resize_bicubic`] is bit-identical to `PIL.Image.resize(size, Image.BICUBIC)` on RGB
//! uint8 with Pillow 13 (see `resize.rs` for the arithmetic, and for the pass order, which
//! changed in Pillow 13 for resizes that shrink the height much more than the width). [`ImageProcessor`] chains the steps of
//! transformers' `CLIPImageProcessor` / `SiglipImageProcessor` PIL backends, with the
//! dtypes they use, so `pixel_values` match to the bit given the same decoded pixels.
//! Presets: [`ImageProcessor::mobilevlm`] (pad with the CLIP-mean colour, shortest edge,
//! centre crop, CLIP mean/std), [`ImageProcessor::clip`] (the same without padding),
//! [`ImageProcessor::imp`] (SigLIP: squash to size × size, mean = std = 0.5) and
//! [`ImageProcessor::imp_pad`] (pad with grey 127 first). Sizes are parameters: 336 for
//! MobileVLM's CLIP ViT-L/14-336, 384 (or 196) for Imp's SigLIP.

mod decode;
mod jpeg;
mod process;
mod resize;
pub mod tiles;

pub use decode::{DecodeLimits, decode_image, decode_image_with_limits, load_image};
pub use process::{
    CLIP_MEAN, CLIP_STD, CropSize, ImageProcessor, PixelValues, RESCALE_1_255, ResizeMode,
    SIGLIP_MEAN, SIGLIP_STD, center_crop, expand_to_square, pad_fill_from_mean,
};
pub use resize::resize_bicubic;

/// An 8-bit RGB image: `data` holds `height` rows of `width` pixels, 3 bytes each
/// (`data.len() == width * height * 3`).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps RGB bytes; `None` when their length is not `width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        let expected = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (data.len() == expected).then_some(RgbImage {
            width,
            height,
            data,
        })
    }

    /// An image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        RgbImage {
            width,
            height,
            data: rgb.repeat(n),
        }
    }

    /// The pixel at column `x`, row `y`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

impl std::fmt::Debug for RgbImage {
    // The pixels would flood test output; the size is what matters in a message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}×{})", self.width, self.height)
    }
}

/// The processor a model spec describes.
pub fn processor_for(spec: &crate::model::spec::ProcessorSpec) -> ImageProcessor {
    use crate::model::spec::Resize;
    let size = spec.size as u32;
    let (resize, center_crop) = match spec.resize {
        Resize::ShortestEdgeThenCrop => (
            ResizeMode::ShortestEdge(size),
            Some(CropSize {
                width: size,
                height: size,
            }),
        ),
        Resize::Squash => (
            ResizeMode::Exact {
                width: size,
                height: size,
            },
            None,
        ),
    };
    ImageProcessor {
        pad_to_square: spec.pad_fill,
        resize,
        center_crop,
        rescale_factor: RESCALE_1_255,
        mean: spec.mean,
        std: spec.std,
    }
}

/// An image preprocessed for a model: one CHW f32 buffer per vision pass (one for a
/// fixed-resolution tower; the tiles and thumbnail for a tiled one), and the grid.
#[derive(Clone, Debug)]
pub struct PreparedPixels {
    pub passes: Vec<Vec<f32>>,
    /// The tile grid (1×1 for fixed-resolution towers).
    pub grid: tiles::TileGrid,
    pub thumbnail: bool,
    /// The decoded image's size.
    pub width: u32,
    pub height: u32,
}

/// Preprocesses a decoded image for a model: the processor alone, or (with `tiling`) the
/// processor over every tile of [`tiles::tile_image`].
pub fn preprocess_passes(
    img: &RgbImage,
    spec: &crate::model::spec::ProcessorSpec,
    tiling: Option<&tiles::TilingSpec>,
) -> PreparedPixels {
    let processor = processor_for(spec);
    match tiling {
        None => PreparedPixels {
            passes: vec![processor.preprocess(img).data],
            grid: tiles::TileGrid { cols: 1, rows: 1 },
            thumbnail: false,
            width: img.width,
            height: img.height,
        },
        Some(t) => {
            let tiled = tiles::tile_image(img, t);
            PreparedPixels {
                passes: tiled
                    .images
                    .iter()
                    .map(|tile| processor.preprocess(tile).data)
                    .collect(),
                grid: tiled.grid,
                thumbnail: tiled.thumbnail,
                width: img.width,
                height: img.height,
            }
        }
    }
}

/// Decodes an image file and preprocesses it for a model: CHW f32 pixels.
pub fn preprocess_file(
    path: &std::path::Path,
    spec: &crate::model::spec::ProcessorSpec,
) -> crate::error::Result<Vec<f32>> {
    let img = load_image(path)?;
    Ok(processor_for(spec).preprocess(&img).data)
}
