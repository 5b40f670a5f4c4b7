//! Image files → [`RgbImage`], with the `image` crate's decoders behind limits.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::RgbImage;
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
    let fail = |e: ImageError| convert_error(e, source);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(source, e))?;
    reader.limits(crate_limits(limits));
    let format = match reader.format() {
        Some(f) if SUPPORTED.contains(&f) => f,
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
    };
    let mut decoder = reader.into_decoder().map_err(fail)?;
    check_size(&decoder, limits, source)?;
    // A damaged EXIF block only loses the rotation, as in image viewers.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(fail)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes, source)?;
    }
    let mut rgb = DynamicImage::ImageRgb8(to_rgb8(decoded));
    rgb.apply_orientation(orientation);
    let rgb = rgb.into_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// The `image` crate's own allocation cap (its default is 512 MiB), set to ours. The side
/// limits are left to `check_size`, which runs before any pixel is decoded and says more.
fn crate_limits(limits: &DecodeLimits) -> ::image::Limits {
    let mut out = ::image::Limits::default();
    out.max_alloc = Some(limits.max_bytes);
    out
}

/// Refuses images whose header claims more than the limits allow, before decoding.
fn check_size(decoder: &impl ImageDecoder, limits: &DecodeLimits, source: &Path) -> Result<()> {
    let (width, height) = decoder.dimensions();
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
    let bytes = decoder.total_bytes();
    if bytes > limits.max_bytes {
        return Err(Error::image(
            source,
            ImageErrorKind::TooLarge,
            format!(
                "{width}×{height} pixels of {:?} decode to {bytes} bytes, over the {} byte limit",
                decoder.color_type(),
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

/// The JPEG decoder is lenient: it fills in the missing part of a truncated file instead
/// of failing (PIL raises "image file is truncated"). So we check that the main image's
/// marker structure reaches its end-of-image marker.
fn check_jpeg_complete(bytes: &[u8], source: &Path) -> Result<()> {
    if jpeg_reaches_eoi(bytes) {
        Ok(())
    } else {
        Err(Error::image(
            source,
            ImageErrorKind::Corrupt,
            "the JPEG data is truncated (it ends before the end-of-image marker)",
        ))
    }
}

/// Walks a JPEG's segments from the start: marker segments are skipped by their length
/// (so an EXIF thumbnail's markers inside APP1 are never seen), entropy-coded data after
/// each start-of-scan up to the next real marker (`FF 00` is a stuffed byte, `FF D0..D7`
/// restart markers). True when an end-of-image marker (`FF D9`) is reached; whatever
/// follows it (phones append videos and metadata) is ignored.
fn jpeg_reaches_eoi(bytes: &[u8]) -> bool {
    let mut i = 0;
    loop {
        // The next marker: stray bytes before it are skipped (libjpeg warns and resyncs),
        // as are 0xFF fill bytes.
        let Some(ff) = bytes[i..].iter().position(|&b| b == 0xFF) else {
            return false;
        };
        i += ff;
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Standalone markers: SOI, TEM, RST0-7 (and a stray stuffed zero).
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 || i + len > bytes.len() {
            return false;
        }
        i += len;
        if marker == 0xDA {
            match skip_entropy_coded_data(&bytes[i..]) {
                Some(n) => i += n,
                None => return false,
            }
        }
    }
}

/// The length of the entropy-coded data at the start of `data`: up to the first `FF`
/// that starts a marker other than a stuffed byte or a restart marker. None if the data
/// ends first.
fn skip_entropy_coded_data(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        i += data[i..].iter().position(|&b| b == 0xFF)?;
        let mut j = i + 1;
        while data.get(j) == Some(&0xFF) {
            j += 1;
        }
        match data.get(j)? {
            0x00 | 0xD0..=0xD7 => i = j + 1,
            _ => return Some(i),
        }
    }
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
    fn jpeg_structure_walk_finds_the_main_eoi() {
        // SOI, APP1 holding a thumbnail's SOS and EOI, SOS, entropy data with a stuffed
        // byte and a restart marker, EOI, then trailing data with marker-like bytes.
        let app1 = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xDA, 0xFF, 0xD9];
        let scan = [
            0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56,
        ];
        let mut jpeg = vec![0xFF, 0xD8];
        jpeg.extend_from_slice(&app1);
        jpeg.extend_from_slice(&scan);
        let complete = [&jpeg[..], &[0xFF, 0xD9]].concat();
        assert!(jpeg_reaches_eoi(&complete));
        assert!(jpeg_reaches_eoi(
            &[&complete[..], &[0xFF, 0xDA, 0x01]].concat()
        ));
        // Cut anywhere before the final EOI: truncated, even though the APP1 holds one.
        for cut in 0..complete.len() - 1 {
            assert!(!jpeg_reaches_eoi(&complete[..cut]), "cut at {cut}");
        }
        let p = Path::new("x.jpg");
        assert!(check_jpeg_complete(&complete, p).is_ok());
        assert!(check_jpeg_complete(&jpeg, p).is_err());
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
