//! Image decoding and preprocessing against PIL and transformers' PIL image processors
//! (tests/fixtures/preprocess/reference.safetensors, written by
//! tests/reference/fixtures_images.py).

use std::path::{Path, PathBuf};

use pocketvlm_engine::Error;
use pocketvlm_engine::error::ImageErrorKind;
use pocketvlm_engine::image::{
    CropSize, DecodeLimits, ImageProcessor, PixelValues, ResizeMode, RgbImage, decode_image,
    decode_image_with_limits, expand_to_square, load_image, resize_bicubic,
};
use pocketvlm_engine::load::safetensors::SafetensorsFile;
use pocketvlm_tests::fixture;
use serde_json::Value;

/// The references and their metadata.
struct Refs {
    file: SafetensorsFile,
    meta: Value,
}

impl Refs {
    fn open() -> Refs {
        let path = fixture("preprocess").join("reference.safetensors");
        let file = SafetensorsFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let meta = serde_json::from_str(&file.metadata()["meta"]).unwrap();
        Refs { file, meta }
    }

    fn bytes(&self, name: &str, dtype: &str) -> (Vec<usize>, &[u8]) {
        let (entry, bytes) = self.file.raw(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.dtype, dtype, "{name}");
        (entry.shape.clone(), bytes)
    }

    /// An `[H, W, 3]` uint8 tensor as an image.
    fn rgb(&self, name: &str) -> RgbImage {
        let (shape, bytes) = self.bytes(name, "U8");
        assert_eq!((shape.len(), shape[2]), (3, 3), "{name}");
        RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes.to_vec()).unwrap()
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.file.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        (t.shape.clone(), t.to_f32_vec())
    }

    fn images(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.meta["images"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The image the references were computed from: PIL's decode, or for gray16.png the
    /// engine's (deliberately different) decode.
    fn input(&self, image: &str) -> RgbImage {
        let info = &self.meta["images"][image];
        let name = info["processed_from"]
            .as_str()
            .map_or(format!("rgb/{image}"), str::to_string);
        self.rgb(&name)
    }

    /// A processor configured from a pipeline's recorded transformers settings.
    fn processor(&self, pipeline: &str) -> ImageProcessor {
        let p = &self.meta["pipelines"][pipeline];
        let triple = |v: &Value| -> [f64; 3] {
            let a = v.as_array().unwrap();
            [0, 1, 2].map(|i| a[i].as_f64().unwrap())
        };
        let u = |v: &Value| v.as_u64().unwrap() as u32;
        let size = &p["size"];
        let resize = match size.get("shortest_edge") {
            Some(s) => ResizeMode::ShortestEdge(u(s)),
            None => ResizeMode::Exact {
                width: u(&size["width"]),
                height: u(&size["height"]),
            },
        };
        assert_eq!(p["resample"], 3, "{pipeline}: only bicubic is implemented");
        ImageProcessor {
            pad_to_square: p["pad_fill"]
                .as_array()
                .map(|a| [0, 1, 2].map(|i| a[i].as_u64().unwrap() as u8)),
            resize,
            center_crop: p["crop_size"].as_object().map(|c| CropSize {
                width: u(&c["width"]),
                height: u(&c["height"]),
            }),
            rescale_factor: p["rescale_factor"].as_f64().unwrap(),
            mean: triple(&p["image_mean"]),
            std: triple(&p["image_std"]),
        }
    }

    /// The JPEG test images (PIL's decode of each is `rgb/{name}`).
    fn jpegs(&self) -> Vec<&str> {
        self.meta["jpegs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    fn pipelines(&self) -> Vec<String> {
        self.meta["pipelines"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}

fn image_path(name: &str) -> PathBuf {
    fixture("images").join(name)
}

/// (max |a − b|, number of differing bytes).
fn byte_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!((a.width, a.height), (b.width, b.height), "sizes differ");
    a.data.iter().zip(&b.data).fold((0, 0), |(max, n), (x, y)| {
        let d = x.abs_diff(*y);
        (max.max(d), n + usize::from(d != 0))
    })
}

/// max |ours − expected| over `[3, H, W]` values, and the same in [0, 1] pixel units
/// (divided by 1/std of the channel).
fn pixel_diff(ours: &PixelValues, shape: &[usize], expected: &[f32], std: [f64; 3]) -> (f32, f32) {
    assert_eq!(shape, [3, ours.height, ours.width]);
    let n = ours.height * ours.width;
    let mut max = 0f32;
    let mut max_pixel_units = 0f32;
    for (i, (a, b)) in ours.data.iter().zip(expected).enumerate() {
        let d = (a - b).abs();
        max = max.max(d);
        max_pixel_units = max_pixel_units.max(d * std[i / n] as f32);
    }
    (max, max_pixel_units)
}

#[test]
fn resize_is_bit_exact_with_pil() {
    let refs = Refs::open();
    let mut cases = 0;
    for (image, info) in refs.images() {
        let input = refs.input(image);
        for size in info["resize"].as_array().unwrap() {
            let (w, h) = (size[0].as_u64().unwrap(), size[1].as_u64().unwrap());
            let expected = refs.rgb(&format!("resize/{image}/{w}x{h}"));
            let ours = resize_bicubic(&input, w as u32, h as u32);
            let (max, n) = byte_diff(&ours, &expected);
            assert_eq!(
                (max, n),
                (0, 0),
                "{image} → {w}x{h}: max byte difference {max} on {n} bytes"
            );
            cases += 1;
        }
    }
    assert!(cases >= 70, "only {cases} resize cases");
    eprintln!("resize: {cases} cases bit-identical to PIL");
}

#[test]
fn normalisation_matches_transformers_for_every_byte() {
    let refs = Refs::open();
    for pipeline in refs.pipelines() {
        let (shape, table) = refs.f32(&format!("table/{pipeline}"));
        assert_eq!(shape, [3, 256]);
        let ours = refs.processor(&pipeline).normalization_table();
        assert_eq!(ours.as_flattened(), &table[..], "{pipeline}");
    }
}

#[test]
fn presets_match_the_reference_configurations() {
    let refs = Refs::open();
    assert_eq!(
        refs.processor("mobilevlm_28"),
        ImageProcessor::mobilevlm(28)
    );
    assert_eq!(
        refs.processor("mobilevlm_336"),
        ImageProcessor::mobilevlm(336)
    );
    assert_eq!(refs.processor("imp_24"), ImageProcessor::imp(24));
    assert_eq!(refs.processor("imp_384"), ImageProcessor::imp(384));
    assert_eq!(refs.processor("imp_pad_24"), ImageProcessor::imp_pad(24));
    let clip = ImageProcessor {
        center_crop: Some(CropSize {
            width: 24,
            height: 22,
        }),
        resize: ResizeMode::ShortestEdge(26),
        ..ImageProcessor::clip(26)
    };
    assert_eq!(refs.processor("clip_26_crop_22x24"), clip);
}

/// Every small pipeline on every image, from the decoded pixels PIL produced: the outputs
/// of transformers' processors, to the bit.
#[test]
fn processors_match_transformers() {
    let refs = Refs::open();
    let mut cases = 0;
    let mut worst = 0f32;
    for pipeline in refs.pipelines() {
        let processor = refs.processor(&pipeline);
        for (image, _) in refs.images() {
            let name = format!("pv/{pipeline}/{image}");
            if refs.file.entry(&name).is_none() {
                continue; // real-size pipelines: see the next test
            }
            let (shape, expected) = refs.f32(&name);
            let ours = processor.preprocess(&refs.input(image));
            let (max, _) = pixel_diff(&ours, &shape, &expected, processor.std);
            assert_eq!(max, 0.0, "{name}: max |difference| {max}");
            worst = worst.max(max);
            cases += 1;
        }
    }
    assert_eq!(cases, 5 * 13);
    eprintln!("processors: {cases} cases, max |difference| {worst}");
}

/// MobileVLM at 336 and Imp at 384 on the two model-fixture images: the references hold
/// the uint8 image transformers normalised and its per-byte output table, which rebuild
/// its float output exactly (fixtures_images.py checks that when it writes them).
#[test]
fn real_size_processors_match_transformers() {
    let refs = Refs::open();
    let cases = refs.meta["real"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (pipeline, image) = (
            case["pipeline"].as_str().unwrap(),
            case["image"].as_str().unwrap(),
        );
        let codes = refs.rgb(case["codes"].as_str().unwrap());
        let (_, table) = refs.f32(&format!("table/{pipeline}"));
        let n = codes.data.len() / 3;
        let mut expected = vec![0f32; 3 * n];
        for (i, px) in codes.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                expected[c * n + i] = table[c * 256 + usize::from(px[c])];
            }
        }
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let processor = refs.processor(pipeline);
        let ours = processor.preprocess(&refs.input(image));
        let (max, _) = pixel_diff(&ours, &shape, &expected, processor.std);
        assert_eq!(max, 0.0, "{pipeline} on {image}: max |difference| {max}");
    }
}

/// The whole path from the file, JPEGs included: transformers' output to the bit.
#[test]
fn pipelines_from_files_match_transformers() {
    let refs = Refs::open();
    let mut cases = 0;
    for pipeline in refs.pipelines() {
        let processor = refs.processor(&pipeline);
        for (image, _) in refs.images() {
            let name = format!("pv/{pipeline}/{image}");
            if refs.file.entry(&name).is_none() {
                continue;
            }
            let (shape, expected) = refs.f32(&name);
            let decoded = load_image(&image_path(image)).unwrap_or_else(|e| panic!("{e}"));
            let ours = processor.preprocess(&decoded);
            let (max, _) = pixel_diff(&ours, &shape, &expected, processor.std);
            assert_eq!(max, 0.0, "{name}");
            cases += 1;
        }
    }
    assert_eq!(cases, 5 * 13);
}

#[test]
fn expand_to_square_matches_pil() {
    let refs = Refs::open();
    let fill = ImageProcessor::mobilevlm(1).pad_to_square.unwrap();
    let mut cases = 0;
    for (image, info) in refs.images() {
        let name = format!("expand/{image}");
        if refs.file.entry(&name).is_none() {
            continue;
        }
        let input = refs.input(image);
        let ours = expand_to_square(&input, fill);
        assert_eq!(byte_diff(&ours, &refs.rgb(&name)), (0, 0), "{name}");
        // The offset along the short axis is (long - short) // 2.
        let (w, h) = (
            info["width"].as_u64().unwrap() as u32,
            info["height"].as_u64().unwrap() as u32,
        );
        let offset = (w.max(h) - w.min(h)) / 2;
        let (x, y) = if w > h { (0, offset) } else { (offset, 0) };
        assert_eq!(ours.pixel(x, y), input.pixel(0, 0), "{image}");
        if offset > 0 {
            let (bx, by) = if w > h {
                (0, offset - 1)
            } else {
                (offset - 1, 0)
            };
            assert_eq!(ours.pixel(bx, by), fill, "{image}");
        }
        cases += 1;
    }
    assert!(cases >= 6, "{cases}");
}

#[test]
fn lossless_images_decode_exactly_like_pil() {
    let refs = Refs::open();
    for (image, _) in refs.images() {
        if image.ends_with(".jpg") || image == "gray16.png" {
            continue;
        }
        let ours = load_image(&image_path(image)).unwrap_or_else(|e| panic!("{e}"));
        let expected = refs.rgb(&format!("rgb/{image}"));
        assert_eq!(byte_diff(&ours, &expected), (0, 0), "{image}");
    }
}

/// Every JPEG layout (sampling factors, progressive scripts with and without block
/// smoothing, restarts, grey, RGB, CMYK, YCCK, damaged data) decodes to PIL's pixels.
#[test]
fn jpegs_decode_exactly_like_pil() {
    let refs = Refs::open();
    let jpegs = refs.jpegs();
    assert!(jpegs.len() >= 30, "{}", jpegs.len());
    for image in jpegs {
        let ours = load_image(&image_path(image)).unwrap_or_else(|e| panic!("{image}: {e}"));
        let expected = refs.rgb(&format!("rgb/{image}"));
        let (max, n) = byte_diff(&ours, &expected);
        assert_eq!(
            (max, n),
            (0, 0),
            "{image}: max byte difference {max} on {n} bytes"
        );
    }
}

/// JPEGs PIL cannot decode either are refused with the recorded kind.
#[test]
fn jpegs_pil_refuses_are_refused() {
    let refs = Refs::open();
    let errors = refs.meta["jpeg_errors"].as_object().unwrap();
    assert!(!errors.is_empty());
    for (image, kind) in errors {
        let kind = match kind.as_str().unwrap() {
            "Unsupported" => ImageErrorKind::Unsupported,
            "Corrupt" => ImageErrorKind::Corrupt,
            other => panic!("{other}"),
        };
        let path = image_path(image);
        assert_image_error(load_image(&path), &path, kind);
    }
}

/// Arithmetic coding, lossless and 12-bit JPEGs are refused as unsupported.
#[test]
fn unsupported_jpeg_kinds_are_refused() {
    let path = image_path("jpeg_420.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let sof = (0..bytes.len() - 1)
        .find(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xC0)
        .unwrap();
    for (marker, precision) in [(0xC9, 8), (0xCA, 8), (0xC3, 8), (0xC1, 12), (0xC5, 8)] {
        let mut patched = bytes.clone();
        patched[sof + 1] = marker;
        patched[sof + 4] = precision;
        let source = Path::new("patched.jpg");
        let result = decode_image(&patched, source);
        assert_image_error(result, source, ImageErrorKind::Unsupported);
    }
}

/// A panic inside a decoder is caught and reported as this (see decode.rs): our own
/// decoder must never get there.
const PANIC_REASON: &str = "the image decoder failed on this data";

/// Cut anywhere before its end-of-image marker, a JPEG is refused as corrupt (PIL: "image
/// file is truncated"), never with a panic.
#[test]
fn truncated_jpegs_are_refused_at_every_length() {
    for image in [
        "jpeg_420.jpg",
        "jpeg_progressive_restarts.jpg",
        "jpeg_multiscan.jpg",
    ] {
        let bytes = std::fs::read(image_path(image)).unwrap();
        for cut in 0..bytes.len() - 1 {
            match decode_image(&bytes[..cut], Path::new(image)) {
                Err(Error::Image { kind, reason, .. }) => {
                    assert_ne!(reason, PANIC_REASON, "{image} cut at {cut}");
                    let expected = if cut < 3 && cut > 0 {
                        // Too short to be recognised as a JPEG at all.
                        ImageErrorKind::Unsupported
                    } else {
                        ImageErrorKind::Corrupt
                    };
                    assert_eq!(kind, expected, "{image} cut at {cut}: {reason}");
                }
                other => panic!("{image} cut at {cut}: {other:?}"),
            }
        }
    }
}

/// Damaged JPEGs (bytes changed anywhere, headers included) decode to something or fail
/// with a typed error, never with a panic. (Small side limits keep a damaged header from
/// claiming a huge image the test would spend seconds filling.)
#[test]
fn damaged_jpegs_never_panic() {
    let mut seed = 0x9E37_79B9u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    let (mut decoded, mut refused) = (0, 0);
    for image in [
        "jpeg_420.jpg",
        "jpeg_progressive.jpg",
        "jpeg_prog_unrefined.jpg",
        "jpeg_multiscan.jpg",
        "jpeg_ycck.jpg",
        "jpeg_restarts.jpg",
    ] {
        let bytes = std::fs::read(image_path(image)).unwrap();
        for case in 0..300 {
            let mut damaged = bytes.clone();
            for _ in 0..1 + case % 4 {
                let pos = 2 + next() % (damaged.len() - 2);
                damaged[pos] = next() as u8;
            }
            if case % 5 == 0 {
                let pos = 2 + next() % (damaged.len() - 2);
                damaged.remove(pos);
            }
            let limits = DecodeLimits {
                max_width: 2048,
                max_height: 2048,
                ..DecodeLimits::default()
            };
            match decode_image_with_limits(&damaged, Path::new(image), &limits) {
                Ok(img) => {
                    assert!(img.width <= 2048 && img.height <= 2048);
                    decoded += 1;
                }
                Err(Error::Image { reason, .. }) => {
                    assert_ne!(reason, PANIC_REASON, "{image} case {case}");
                    refused += 1;
                }
                Err(e) => panic!("{image} case {case}: {e}"),
            }
        }
    }
    eprintln!("damaged JPEGs: {decoded} decoded, {refused} refused");
    assert!(decoded > 0 && refused > 0);
}

/// Phones append data after a JPEG's end (motion-photo videos, metadata): it is ignored,
/// even when it looks like JPEG markers.
#[test]
fn data_after_the_jpeg_end_is_ignored() {
    let path = image_path("photo_wide.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let plain = decode_image(&bytes, &path).unwrap();
    let trailer = [&bytes[..], b"\xFF\xDA\x00\x04video\xFF\xD8"].concat();
    assert_eq!(decode_image(&trailer, &path).unwrap(), plain);
}

/// Deliberate: EXIF orientation is applied (PIL's plain open().convert("RGB") would not).
#[test]
fn exif_orientation_is_applied() {
    let img = load_image(&image_path("exif_rot6.jpg")).unwrap();
    // Stored 48×32 with orientation 6 (rotate 90° clockwise to display): upright it is 32×48.
    assert_eq!((img.width, img.height), (32, 48));
}

/// Deliberate: 16-bit samples are scaled (round(v / 257)); PIL's convert("RGB") clips them.
#[test]
fn sixteen_bit_images_are_scaled_not_clipped() {
    let refs = Refs::open();
    let ours = load_image(&image_path("gray16.png")).unwrap();
    assert_eq!(byte_diff(&ours, &refs.rgb("rgb_scaled/gray16.png")), (0, 0));
    // What PIL gives instead: min(v, 255), replicated.
    let (_, raw) = refs.bytes("gray16/values", "U16");
    let pil = refs.rgb("rgb/gray16.png");
    for (i, v) in raw.chunks_exact(2).enumerate() {
        let v = u16::from_le_bytes([v[0], v[1]]);
        assert_eq!(pil.data[i * 3], v.min(255) as u8);
        assert_eq!(ours.data[i * 3], ((u32::from(v) + 128) / 257) as u8);
    }
}

/// Alpha is dropped like convert("RGB") (no compositing): fully transparent pixels keep
/// their colour instead of turning white.
#[test]
fn alpha_is_dropped_not_composited() {
    let ours = load_image(&image_path("rgba.png")).unwrap();
    // The first five columns have alpha 0; composited on white they would be (255, 255, 255).
    assert_ne!(ours.pixel(0, 10), [255, 255, 255]);
    assert_eq!(
        ours.pixel(0, 10),
        Refs::open().rgb("rgb/rgba.png").pixel(0, 10)
    );
}

/// Asserts that decoding `path` fails with an image error of `kind` naming the file.
fn assert_image_error(result: Result<RgbImage, Error>, path: &Path, kind: ImageErrorKind) {
    match result {
        Err(Error::Image {
            path: p,
            kind: k,
            reason,
        }) => {
            assert_eq!((p.as_path(), k), (path, kind), "{reason}");
            let msg = Error::Image {
                path: p,
                kind: k,
                reason,
            }
            .to_string();
            let file_name = path.file_name().unwrap().to_str().unwrap();
            assert!(msg.contains(file_name), "{msg}");
            eprintln!("{msg}");
        }
        Err(e) => panic!(
            "{}: expected a {kind:?} image error, got {e:?}",
            path.display()
        ),
        Ok(img) => panic!("{}: decoded to {img:?}", path.display()),
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let jpeg = std::fs::read(image_path("photo_wide.jpg")).unwrap();
    let png = std::fs::read(image_path("shapes_square.png")).unwrap();
    let cases = [
        (
            write("truncated.jpg", &jpeg[..jpeg.len() / 2]),
            ImageErrorKind::Corrupt,
        ),
        (
            write("truncated.png", &png[..png.len() / 2]),
            ImageErrorKind::Corrupt,
        ),
        (
            write("notes.png", b"just some text\n"),
            ImageErrorKind::Unsupported,
        ),
        (write("empty.jpg", b""), ImageErrorKind::Corrupt),
        (
            write("image.tiff", b"II*\0\x08\0\0\0\0\0"),
            ImageErrorKind::Unsupported,
        ),
        (image_path("huge_30000x30000.png"), ImageErrorKind::TooLarge),
        (
            image_path("huge_16000x16000_rgba16.png"),
            ImageErrorKind::TooLarge,
        ),
    ];
    for (path, kind) in cases {
        assert_image_error(load_image(&path), &path, kind);
    }
    // In-memory decoding names the source it is given.
    let source = Path::new("upload.png");
    assert_image_error(
        decode_image(b"GIF89a", source),
        source,
        ImageErrorKind::Corrupt,
    );
    // Custom limits: the side limit and the decoded-size limit.
    let photo = image_path("photo_wide.jpg");
    let bytes = std::fs::read(&photo).unwrap();
    let small_sides = DecodeLimits {
        max_width: 159,
        ..DecodeLimits::default()
    };
    let small_memory = DecodeLimits {
        max_bytes: 160 * 120 * 3 - 1,
        ..DecodeLimits::default()
    };
    for limits in [small_sides, small_memory] {
        let result = decode_image_with_limits(&bytes, &photo, &limits);
        assert_image_error(result, &photo, ImageErrorKind::TooLarge);
    }
    let exact = DecodeLimits {
        max_width: 160,
        max_height: 120,
        max_bytes: 160 * 120 * 3,
    };
    assert!(decode_image_with_limits(&bytes, &photo, &exact).is_ok());
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.png");
    assert!(matches!(load_image(&missing), Err(Error::Io { path, .. }) if path == missing));
}

/// A progressive JPEG is decoded through a coefficient buffer (2 bytes per coefficient):
/// the memory limit counts it, so a limit that fits the RGB output alone is not enough.
#[test]
fn progressive_jpegs_count_their_coefficient_buffer() {
    let refs = Refs::open();
    for (image, progressive) in [("jpeg_420.jpg", false), ("jpeg_progressive.jpg", true)] {
        let path = image_path(image);
        let bytes = std::fs::read(&path).unwrap();
        let rgb = refs.rgb(&format!("rgb/{image}"));
        let limits = DecodeLimits {
            max_bytes: u64::from(rgb.width * rgb.height * 3),
            ..DecodeLimits::default()
        };
        let result = decode_image_with_limits(&bytes, &path, &limits);
        if progressive {
            assert_image_error(result, &path, ImageErrorKind::TooLarge);
        } else {
            assert_eq!(result.unwrap(), rgb);
        }
    }
}

/// Found by fuzzing (fuzz/corpus/image/seed-regression-plte.png): a palette
/// PNG whose PLTE chunk is 49 bytes, which made the `png` crate panic. It is refused as
/// corrupt by our own check, before the decoder (not by the panic safety net).
#[test]
fn a_palette_that_is_not_rgb_triples_is_refused() {
    let path = image_path("fuzz_plte_not_rgb_triples.png");
    match load_image(&path) {
        Err(Error::Image { kind, reason, .. }) => {
            assert_eq!(kind, ImageErrorKind::Corrupt);
            assert!(reason.contains("palette has 49 bytes"), "{reason}");
        }
        other => panic!("{:?}", other.map(|i| (i.width, i.height))),
    }
}
