//! Vision-tower preprocessing: pad to square, resize, centre crop, rescale, normalise —
//! the steps and arithmetic of transformers' PIL image processors
//! (`PilBackend._preprocess` with `CLIPImageProcessorPil` / `SiglipImageProcessorPil`)
//! and of the MobileVLM / LLaVA / Imp `expand2square` step that comes before them.

use std::borrow::Cow;

use super::RgbImage;
use super::resize::{Window, resize_bicubic_window};

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// SigLIP's normalisation (transformers' `IMAGENET_STANDARD_MEAN` / `_STD`).
pub const SIGLIP_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
pub const SIGLIP_STD: [f64; 3] = [0.5, 0.5, 0.5];
/// transformers' default `rescale_factor`, 1/255.
pub const RESCALE_1_255: f64 = 1.0 / 255.0;

/// Preprocessed pixels: 3 channels, channel-major (`[3, height, width]`, like one image of
/// transformers' `pixel_values`).
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl PixelValues {
    pub const CHANNELS: usize = 3;

    /// The plane of channel `c` (row-major `height × width`).
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }
}

/// How the image is resized (transformers' `size` of the processor config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// `{"shortest_edge": n}` (CLIP): the shorter side becomes `n`, the longer one
    /// `int(n * long / short)` — the aspect ratio is kept, rounding down.
    ShortestEdge(u32),
    /// `{"height": h, "width": w}` (SigLIP, Imp): straight to this size, the aspect ratio is
    /// not kept.
    Exact { width: u32, height: u32 },
}

impl ResizeMode {
    /// The `(width, height)` an input of `width × height` is resized to. Mirrors
    /// transformers' `get_resize_output_image_size(..., default_to_square=False)`.
    pub fn output_size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            ResizeMode::Exact { width, height } => (width, height),
            ResizeMode::ShortestEdge(size) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                if short == 0 {
                    // Python would divide by zero; an empty image stays empty.
                    return (0, 0);
                }
                // Python: `int(size * long / short)`; the product is exact in f64 and the
                // true division correctly rounded, as in Python.
                let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
                if width <= height {
                    (size, new_long)
                } else {
                    (new_long, size)
                }
            }
        }
    }
}

/// A centre crop (transformers' `crop_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropSize {
    pub width: u32,
    pub height: u32,
}

/// Turns a decoded image into a vision tower's `pixel_values`. The steps, in order:
/// 1. `pad_to_square`: [`expand_to_square`] with this fill (MobileVLM / LLaVA / Imp
///    `image_aspect_ratio: "pad"`), before the transformers processor runs;
/// 2. resize with Pillow's bicubic filter ([`super::resize_bicubic`]) per `resize`;
/// 3. `center_crop`, if set (zero-padding where the image is smaller than the crop, as
///    transformers does);
/// 4. `x_f32 = f32(f64(x) * rescale_factor)`, then `(x_f32 - f32(mean)) / f32(std)` in
///    f32 — the dtypes transformers uses (`rescale` multiplies in float64 and casts to
///    float32; `normalize` works in float32), so results match to the bit.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pub pad_to_square: Option<[u8; 3]>,
    pub resize: ResizeMode,
    pub center_crop: Option<CropSize>,
    pub rescale_factor: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ImageProcessor {
    /// CLIP's processor (e.g. ViT-L/14-336 with `size = 336`): shortest edge to `size`,
    /// centre crop `size × size`, CLIP mean/std. No padding.
    pub fn clip(size: u32) -> Self {
        ImageProcessor {
            pad_to_square: None,
            resize: ResizeMode::ShortestEdge(size),
            center_crop: Some(CropSize {
                width: size,
                height: size,
            }),
            rescale_factor: RESCALE_1_255,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// MobileVLM (`image_aspect_ratio: "pad"`): `expand2square` with the fill derived from
    /// the CLIP mean, (122, 116, 104) (see [`pad_fill_from_mean`]), then [`Self::clip`].
    pub fn mobilevlm(size: u32) -> Self {
        ImageProcessor {
            pad_to_square: Some(pad_fill_from_mean(CLIP_MEAN)),
            ..Self::clip(size)
        }
    }

    /// SigLIP as Imp uses it: squashed straight to `size × size` (no aspect preservation),
    /// mean = std = 0.5.
    pub fn imp(size: u32) -> Self {
        ImageProcessor {
            pad_to_square: None,
            resize: ResizeMode::Exact {
                width: size,
                height: size,
            },
            center_crop: None,
            rescale_factor: RESCALE_1_255,
            mean: SIGLIP_MEAN,
            std: SIGLIP_STD,
        }
    }

    /// Imp with `image_aspect_ratio: "pad"`: `expand2square` with grey (127, 127, 127)
    /// (from mean 0.5), then [`Self::imp`].
    pub fn imp_pad(size: u32) -> Self {
        ImageProcessor {
            pad_to_square: Some(pad_fill_from_mean(SIGLIP_MEAN)),
            ..Self::imp(size)
        }
    }

    /// The `(width, height)` of the output for an input of `width × height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (width, height) = match self.pad_to_square {
            Some(_) => (width.max(height), width.max(height)),
            None => (width, height),
        };
        match self.center_crop {
            Some(c) => (c.width, c.height),
            None => self.resize.output_size(width, height),
        }
    }

    /// Runs the whole pipeline on one image.
    pub fn preprocess(&self, img: &RgbImage) -> PixelValues {
        let img = match self.pad_to_square {
            Some(fill) => Cow::Owned(expand_to_square(img, fill)),
            None => Cow::Borrowed(img),
        };
        let (width, height) = self.resize.output_size(img.width, img.height);
        let pixels = match self.center_crop {
            None => resize_bicubic_window(
                &img,
                width,
                height,
                Window {
                    x: 0,
                    y: 0,
                    width,
                    height,
                },
            ),
            Some(crop) => resize_and_crop(&img, width, height, crop),
        };
        self.normalize(&pixels)
    }

    /// Step 4 for every possible byte: `table[c][v]` is the output for value `v` in
    /// channel `c`.
    pub fn normalization_table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            let mean = self.mean[c] as f32;
            let std = self.std[c] as f32;
            for (v, out) in row.iter_mut().enumerate() {
                let rescaled = (v as f64 * self.rescale_factor) as f32;
                *out = (rescaled - mean) / std;
            }
        }
        table
    }

    /// Step 4: HWC bytes → CHW normalised floats.
    fn normalize(&self, img: &RgbImage) -> PixelValues {
        let table = self.normalization_table();
        let mut data = Vec::with_capacity(img.data.len());
        for (c, channel_table) in table.iter().enumerate() {
            data.extend(
                img.data
                    .chunks_exact(3)
                    .map(|px| channel_table[usize::from(px[c])]),
            );
        }
        PixelValues {
            height: img.height as usize,
            width: img.width as usize,
            data,
        }
    }
}

/// The pad colour the LLaVA family derives from the processor's mean:
/// `tuple(int(x * 255) for x in image_mean)` (Python's `int` truncates).
pub fn pad_fill_from_mean(mean: [f64; 3]) -> [u8; 3] {
    mean.map(|m| (m * 255.0) as u8)
}

/// LLaVA's / MobileVLM's `expand2square`: the image centred on a square canvas of `fill`,
/// side `max(width, height)`, pasted at offset `(long - short) / 2` (rounded down) along
/// the short axis. A square image is returned unchanged.
pub fn expand_to_square(img: &RgbImage, fill: [u8; 3]) -> RgbImage {
    let side = img.width.max(img.height);
    let left = (side - img.width) / 2;
    let top = (side - img.height) / 2;
    let mut out = RgbImage::filled(side, side, fill);
    paste(&mut out, img, left, top);
    out
}

/// Copies `src` into `dst` with its top-left corner at (`left`, `top`); `src` must fit.
fn paste(dst: &mut RgbImage, src: &RgbImage, left: u32, top: u32) {
    let src_stride = src.width as usize * 3;
    let dst_stride = dst.width as usize * 3;
    if src_stride == 0 {
        return;
    }
    for (y, row) in src.data.chunks_exact(src_stride).enumerate() {
        let at = (top as usize + y) * dst_stride + left as usize * 3;
        dst.data[at..at + src_stride].copy_from_slice(row);
    }
}

/// The `width × height` window of `img` whose top-left corner is at (`left`, `top`) (which
/// may be negative or past the edge); pixels outside the image are black (zero).
pub(crate) fn crop_or_pad(
    img: &RgbImage,
    left: i64,
    top: i64,
    width: u32,
    height: u32,
) -> RgbImage {
    let mut out = RgbImage::filled(width, height, [0, 0, 0]);
    // The overlap of the window with the image, in image coordinates.
    let x0 = left.max(0);
    let x1 = (left + i64::from(width)).min(i64::from(img.width));
    let y0 = top.max(0);
    let y1 = (top + i64::from(height)).min(i64::from(img.height));
    if x0 >= x1 || y0 >= y1 {
        return out;
    }
    let (in_stride, out_stride) = (img.width as usize * 3, width as usize * 3);
    let n = (x1 - x0) as usize * 3;
    for y in y0..y1 {
        let src = y as usize * in_stride + x0 as usize * 3;
        let dst = (y - top) as usize * out_stride + (x0 - left) as usize * 3;
        out.data[dst..dst + n].copy_from_slice(&img.data[src..src + n]);
    }
    out
}

/// transformers' `center_crop`: per axis, the crop starts at `(size - crop) // 2` (Python
/// floor division). Where the crop is larger than the image this is negative, and the
/// image lands at `ceil((crop - size) / 2)` on a zero canvas — which is what its padding
/// branch computes.
pub fn center_crop(img: &RgbImage, crop: CropSize) -> RgbImage {
    let left = crop_offset(img.width, crop.width);
    let top = crop_offset(img.height, crop.height);
    crop_or_pad(img, left, top, crop.width, crop.height)
}

fn crop_offset(size: u32, crop: u32) -> i64 {
    (i64::from(size) - i64::from(crop)).div_euclid(2)
}

/// Resize to `width × height`, then centre crop — computing only the part of the resize
/// the crop keeps (bit-identical to resizing everything, see `resize_bicubic_window`).
fn resize_and_crop(img: &RgbImage, width: u32, height: u32, crop: CropSize) -> RgbImage {
    let left = crop_offset(width, crop.width);
    let top = crop_offset(height, crop.height);
    // The part of the resized image inside the crop window.
    let x0 = left.max(0);
    let y0 = top.max(0);
    let x1 = (left + i64::from(crop.width)).min(i64::from(width));
    let y1 = (top + i64::from(crop.height)).min(i64::from(height));
    let window = Window {
        x: x0 as u32,
        y: y0 as u32,
        width: (x1 - x0).max(0) as u32,
        height: (y1 - y0).max(0) as u32,
    };
    let part = resize_bicubic_window(img, width, height, window);
    // Place it in the crop (a plain copy when the crop fits inside the resized image).
    crop_or_pad(&part, left.min(0), top.min(0), crop.width, crop.height)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::resize_bicubic;

    fn numbered(width: u32, height: u32) -> RgbImage {
        RgbImage {
            width,
            height,
            data: (0..width * height * 3).map(|i| (i % 253) as u8).collect(),
        }
    }

    #[test]
    fn mobilevlm_fill_is_truncated_mean() {
        assert_eq!(pad_fill_from_mean(CLIP_MEAN), [122, 116, 104]);
        assert_eq!(pad_fill_from_mean(SIGLIP_MEAN), [127, 127, 127]);
    }

    #[test]
    fn shortest_edge_rounds_down_like_python() {
        let r = ResizeMode::ShortestEdge(336);
        assert_eq!(r.output_size(160, 120), (448, 336));
        assert_eq!(r.output_size(120, 160), (336, 448));
        assert_eq!(r.output_size(1000, 333), (1009, 336)); // 336*1000/333 = 1009.009
        assert_eq!(r.output_size(7, 7), (336, 336));
        assert_eq!(r.output_size(1, 0), (0, 0)); // degenerate, but no panic
    }

    #[test]
    fn expand_to_square_centres_with_floor_offset() {
        let img = numbered(5, 2);
        let sq = expand_to_square(&img, [1, 2, 3]);
        assert_eq!((sq.width, sq.height), (5, 5));
        // (5 - 2) // 2 = 1 row of fill above, 2 below.
        assert_eq!(sq.pixel(0, 0), [1, 2, 3]);
        assert_eq!(sq.pixel(4, 1), img.pixel(4, 0));
        assert_eq!(sq.pixel(0, 2), img.pixel(0, 1));
        assert_eq!(sq.pixel(0, 3), [1, 2, 3]);
        let tall = expand_to_square(&numbered(2, 5), [9, 9, 9]);
        assert_eq!(tall.pixel(0, 0), [9, 9, 9]);
        assert_eq!(tall.pixel(1, 0), [0, 1, 2]);
        let square = numbered(3, 3);
        assert_eq!(expand_to_square(&square, [7; 3]), square);
    }

    #[test]
    fn center_crop_offsets_and_padding() {
        let img = numbered(7, 4);
        let crop = |width, height| CropSize { width, height };
        let c = center_crop(&img, crop(4, 4));
        assert_eq!(c.pixel(0, 0), img.pixel(1, 0)); // (7 - 4) // 2 = 1
        let p = center_crop(&img, crop(7, 7));
        // ceil((7 - 4) / 2) = 2 zero rows above, 1 below.
        assert_eq!(p.pixel(0, 1), [0, 0, 0]);
        assert_eq!(p.pixel(0, 2), img.pixel(0, 0));
        assert_eq!(p.pixel(6, 5), img.pixel(6, 3));
        assert_eq!(p.pixel(6, 6), [0, 0, 0]);
    }

    #[test]
    fn resize_and_crop_equals_crop_of_resize() {
        let img = numbered(13, 9);
        for (w, h, cw, ch) in [
            (30, 20, 24, 20),
            (20, 30, 26, 10),
            (8, 6, 10, 3),
            (5, 5, 9, 9),
        ] {
            let crop = CropSize {
                width: cw,
                height: ch,
            };
            let expected = center_crop(&resize_bicubic(&img, w, h), crop);
            let got = resize_and_crop(&img, w, h, crop);
            assert_eq!(got, expected, "{w}x{h} crop {cw}x{ch}");
        }
    }

    #[test]
    fn normalisation_uses_transformers_dtypes() {
        let t = ImageProcessor::clip(4).normalization_table();
        let expected = ((255f64 * (1.0 / 255.0)) as f32 - 0.48145466f32) / 0.26862954f32;
        assert_eq!(t[0][255], expected);
        assert_eq!(ImageProcessor::imp(4).normalization_table()[1][0], -1.0);
    }

    #[test]
    fn preprocess_shapes() {
        let img = numbered(10, 6);
        let pv = ImageProcessor::mobilevlm(8).preprocess(&img);
        assert_eq!((pv.width, pv.height, pv.data.len()), (8, 8, 3 * 64));
        let pv = ImageProcessor::clip(4).preprocess(&img);
        assert_eq!((pv.width, pv.height), (4, 4));
        let pv = ImageProcessor::imp(5).preprocess(&img);
        assert_eq!((pv.width, pv.height), (5, 5));
        assert_eq!(ImageProcessor::clip(4).output_size(10, 6), (4, 4));
        assert!(ImageProcessor::clip(0).preprocess(&img).data.is_empty());
    }
}
