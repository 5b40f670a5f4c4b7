//! Image files → [`RgbImage`]: JPEG with our own decoder (bit-identical to PIL's
//! libjpeg-turbo, see `jpeg/mod.rs`), the other formats with the `image` crate's decoders,
//! all behind limits.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::RgbImage;
use super::jpeg;
use crate::error::{Error, ImageErrorKind, Result};

/// The formats we decode, by their content (the file name is not consulted).
const SUPPORTED: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::WebP,
];
const SUPPORTED_NAMES: &str = "JPEG, PNG, GIF, BMP or WebP";

/// Limits checked before any pixel is decoded, so a small file that claims a huge image (a
/// decompression bomb) is refused instead of exhausting memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Cap on the decoder's output buffer (width × height × bytes per pixel of the stored
    /// colour type) and on the file size.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    /// 16384 × 16384 pixels and 1 GiB: far above any camera photo, well below what would
    /// hurt a phone.
    fn default() -> Self {
        DecodeLimits {
            max_width: 16384,
            max_height: 16384,
            max_bytes: 1 << 30,
        }
    }
}

/// Reads and decodes an image file with the default [`DecodeLimits`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let limits = DecodeLimits::default();
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > limits.max_bytes {
        return Err(Error::image(
            path,
            ImageErrorKind::TooLarge,
            format!(
                "the file is {size} bytes, over the {} byte limit",
                limits.max_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image_with_limits(&bytes, path, &limits)
}

/// Decodes an image held in memory with the default [`DecodeLimits`]. `source` names it in
/// errors (it is not read).
pub fn decode_image(bytes: &[u8], source: &Path) -> Result<RgbImage> {
    decode_image_with_limits(bytes, source, &DecodeLimits::default())
}

/// Decodes an image held in memory: the format is recognised from the content; EXIF
/// orientation is applied; the result is converted to RGB8 as described in the module docs.
pub fn decode_image_with_limits(
    bytes: &[u8],
    source: &Path,
    limits: &DecodeLimits,
) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::image(
            source,
            ImageErrorKind::Corrupt,
            "the file is empty",
        ));
    }
    // The decoders are third-party code fed untrusted bytes: a panic in one of them is
    // turned into an error too, so no input can take the engine down.
    catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, source, limits))).unwrap_or_else(|_| {
        Err(Error::image(
            source,
            ImageErrorKind::Corrupt,
            "the image decoder failed on this data",
        ))
    })
}

fn decode_inner(bytes: &[u8], source: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    // The signature the `image` crate (and PIL) recognise JPEG by.
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes, source, limits);
    }
    check_png_palette(bytes, source)?;
    let fail = |e: ImageError| convert_error(e, source);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(source, e))?;
    reader.limits(crate_limits(limits));
    match reader.format() {
        Some(f) if SUPPORTED.contains(&f) => {}
        Some(f) => {
            return Err(Error::image(
                source,
                ImageErrorKind::Unsupported,
                format!("{f:?} images are not supported (only {SUPPORTED_NAMES})"),
            ));
        }
        None => {
            return Err(Error::image(
                source,
                ImageErrorKind::Unsupported,
                format!("the data is not a {SUPPORTED_NAMES} image"),
            ));
        }
    }
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let (width, height) = decoder.dimensions();
    check_size(
        width,
        height,
        decoder.total_bytes(),
        &format!("{:?}", decoder.color_type()),
        limits,
        source,
    )?;
    // A damaged EXIF block only loses the rotation, as in image viewers.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(fail)?;
    Ok(oriented(to_rgb8(decoded), orientation))
}

/// A PNG whose palette (`PLTE`) is not whole RGB triples (1 to 256 of them) is invalid:
/// refused here, before the `png` crate, which panics expanding such a palette (found by
/// fuzzing; png 0.18). Chunks are walked up to the first `IDAT`; a malformed chunk list is
/// left to the decoder's own errors.
fn check_png_palette(bytes: &[u8], source: &Path) -> Result<()> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
        return Ok(());
    };
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = &rest[4..8];
        if kind == b"IDAT" {
            break;
        }
        if kind == b"PLTE" && (len == 0 || !len.is_multiple_of(3) || len > 256 * 3) {
            return Err(Error::image(
                source,
                ImageErrorKind::Corrupt,
                format!("the PNG palette has {len} bytes, not 1 to 256 RGB entries"),
            ));
        }
        let Some(next) = rest.get(12usize.saturating_add(len)..) else {
            break;
        };
        rest = next;
    }
    Ok(())
}

/// JPEG: the header is read first, so the size is checked before anything image-sized is
/// allocated. A truncated file (one that ends before its end-of-image marker) is refused,
/// as PIL refuses it ("image file is truncated"); data after the end is ignored.
fn decode_jpeg(bytes: &[u8], source: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let fail = |e: jpeg::JpegError| Error::image(source, e.kind, e.reason);
    let header = jpeg::read_header(bytes).map_err(fail)?;
    let (width, height) = (header.width(), header.height());
    // What the `image` crate reported for a JPEG: grey as L8, everything else as Rgb8.
    let (layout, bytes_per_pixel) = match header.color_space() {
        jpeg::ColorSpace::Grey => ("L8", 1),
        _ => ("Rgb8", 3),
    };
    let stored = u64::from(width) * u64::from(height) * bytes_per_pixel;
    check_size(width, height, stored, layout, limits, source)?;
    let needed = header.decoded_bytes();
    if needed > limits.max_bytes {
        return Err(Error::image(
            source,
            ImageErrorKind::TooLarge,
            format!(
                "decoding this {width}×{height} JPEG needs {needed} bytes of buffers, over the {} byte limit",
                limits.max_bytes
            ),
        ));
    }
    // A damaged EXIF block only loses the rotation, as in image viewers.
    let orientation = header
        .exif()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let rgb = header.decode().map_err(fail)?;
    let rgb = ::image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| {
        Error::image(
            source,
            ImageErrorKind::Corrupt,
            "the JPEG decoded to the wrong size",
        )
    })?;
    Ok(oriented(rgb, orientation))
}

/// Applies the EXIF orientation (see the module docs: deliberate, unlike PIL's plain
/// `open().convert("RGB")`).
fn oriented(rgb: ::image::RgbImage, orientation: Orientation) -> RgbImage {
    let mut rgb = DynamicImage::ImageRgb8(rgb);
    rgb.apply_orientation(orientation);
    let rgb = rgb.into_rgb8();
    RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    }
}

/// The `image` crate's own allocation cap (its default is 512 MiB), set to ours. The side
/// limits are left to `check_size`, which runs before any pixel is decoded and says more.
fn crate_limits(limits: &DecodeLimits) -> ::image::Limits {
    let mut out = ::image::Limits::default();
    out.max_alloc = Some(limits.max_bytes);
    out
}

/// Refuses images whose header claims more than the limits allow, before decoding:
/// `stored` is the decoder's buffer for the `layout` it decodes to.
fn check_size(
    width: u32,
    height: u32,
    stored: u64,
    layout: &str,
    limits: &DecodeLimits,
    source: &Path,
) -> Result<()> {
    if width > limits.max_width || height > limits.max_height {
        return Err(Error::image(
            source,
            ImageErrorKind::TooLarge,
            format!(
                "{width}×{height} pixels is over the {}×{} limit",
                limits.max_width, limits.max_height
            ),
        ));
    }
    if stored > limits.max_bytes {
        return Err(Error::image(
            source,
            ImageErrorKind::TooLarge,
            format!(
                "{width}×{height} pixels of {layout} decode to {stored} bytes, over the {} byte limit",
                limits.max_bytes
            ),
        ));
    }
    if width == 0 || height == 0 {
        return Err(Error::image(
            source,
            ImageErrorKind::Corrupt,
            format!("the image is {width}×{height} pixels"),
        ));
    }
    Ok(())
}

/// Maps the `image` crate's errors onto our kinds. A read past the end of the data (an
/// I/O error from the in-memory reader) means truncated data.
fn convert_error(e: ImageError, source: &Path) -> Error {
    let kind = match &e {
        ImageError::Limits(_) => ImageErrorKind::TooLarge,
        ImageError::Unsupported(_) => ImageErrorKind::Unsupported,
        ImageError::Decoding(_)
        | ImageError::IoError(_)
        | ImageError::Parameter(_)
        | ImageError::Encoding(_) => ImageErrorKind::Corrupt,
    };
    Error::image(source, kind, e.to_string())
}

/// Converts any decoded layout to RGB8 (see the module docs): grey is replicated, alpha is
/// dropped (no compositing), 16-bit samples are scaled with rounding (`round(v / 257)`),
/// float samples are clamped to [0, 1] and scaled.
fn to_rgb8(img: DynamicImage) -> ::image::RgbImage {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb8(buf) => return buf,
        DynamicImage::ImageLuma8(buf) => rgb_from(buf.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(buf) => rgb_from(buf.as_raw(), 2, |v| v),
        DynamicImage::ImageRgba8(buf) => rgb_from(buf.as_raw(), 4, |v| v),
        DynamicImage::ImageLuma16(buf) => rgb_from(buf.as_raw(), 1, u16_to_u8),
        DynamicImage::ImageLumaA16(buf) => rgb_from(buf.as_raw(), 2, u16_to_u8),
        DynamicImage::ImageRgb16(buf) => rgb_from(buf.as_raw(), 3, u16_to_u8),
        DynamicImage::ImageRgba16(buf) => rgb_from(buf.as_raw(), 4, u16_to_u8),
        DynamicImage::ImageRgb32F(buf) => rgb_from(buf.as_raw(), 3, f32_to_u8),
        DynamicImage::ImageRgba32F(buf) => rgb_from(buf.as_raw(), 4, f32_to_u8),
        // A layout added to the crate later: its own conversion.
        other => return other.to_rgb8(),
    };
    ::image::RgbImage::from_raw(width, height, data)
        .unwrap_or_else(|| ::image::RgbImage::new(width, height))
}

/// RGB bytes from interleaved samples with `channels` per pixel: 1 = grey, 2 = grey +
/// alpha, 3 = RGB, 4 = RGBA.
fn rgb_from<T: Copy>(samples: &[T], channels: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / channels * 3);
    for px in samples.chunks_exact(channels) {
        if channels < 3 {
            let g = to_u8(px[0]);
            out.extend_from_slice(&[g, g, g]);
        } else {
            out.extend_from_slice(&[to_u8(px[0]), to_u8(px[1]), to_u8(px[2])]);
        }
    }
    out
}

/// round(v × 255 / 65535) = round(v / 257), exact in integers.
fn u16_to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

fn f32_to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_scaling_rounds() {
        assert_eq!(u16_to_u8(0), 0);
        assert_eq!(u16_to_u8(128), 0);
        assert_eq!(u16_to_u8(129), 1);
        assert_eq!(u16_to_u8(257), 1);
        assert_eq!(u16_to_u8(65535), 255);
        for v in 0..=u16::MAX {
            let exact = (f64::from(v) * 255.0 / 65535.0).round() as u8;
            assert_eq!(u16_to_u8(v), exact, "{v}");
        }
    }

    #[test]
    fn layouts_convert_to_rgb() {
        assert_eq!(rgb_from(&[7u8, 200], 2, |v| v), vec![7, 7, 7]);
        assert_eq!(rgb_from(&[1u8, 2, 3, 0], 4, |v| v), vec![1, 2, 3]);
        assert_eq!(rgb_from(&[9u8], 1, |v| v), vec![9, 9, 9]);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let p = Path::new("notes.png");
        for bytes in [&b""[..], b"hello, world\n", b"\x89PNG\r\n\x1a\n\0\0"] {
            match decode_image(bytes, p) {
                Err(Error::Image { path, .. }) => assert_eq!(path, p),
                other => panic!("{other:?}"),
            }
        }
    }
}
