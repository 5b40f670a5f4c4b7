//! Images off the UI thread: importing attachments (read, check that they decode, copy
//! into the data folder, make a thumbnail) and decoding stored images for display. Results
//! come back over a channel; the UI turns them into textures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, unbounded};
use pocketvlm_engine::image::{RgbImage, decode_image, resize_bicubic};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 160;
/// Longest side of the full-size view's texture.
pub const VIEW_SIDE: u32 = 1600;

/// Where an attachment comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file on disk (attach dialog, a dropped file).
    Path(PathBuf),
    /// File bytes (a dropped file with no path).
    Bytes { name: String, bytes: Arc<Vec<u8>> },
    /// Pixels from the clipboard.
    Pasted(Arc<egui::ColorImage>),
}

impl Source {
    pub fn display_name(&self) -> String {
        match self {
            Source::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Source::Bytes { name, .. } => name.clone(),
            Source::Pasted(_) => "pasted image".into(),
        }
    }
}

/// What a worker found.
pub enum Done {
    Imported {
        attachment: u64,
        /// The stored file's name in the image folder.
        stored: String,
        thumb: egui::ColorImage,
    },
    ImportFailed {
        attachment: u64,
        name: String,
        error: String,
    },
    Decoded {
        key: TextureKey,
        image: Result<egui::ColorImage, String>,
    },
}

/// A stored image at a display size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TextureKey {
    pub name: String,
    pub max_side: u32,
}

pub enum Texture {
    Pending,
    Ready(egui::TextureHandle),
    Failed(String),
}

/// Starts image work on worker threads and keeps the textures it produced.
pub struct Images {
    images_dir: PathBuf,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    textures: HashMap<TextureKey, Texture>,
    ctx: egui::Context,
}

impl Images {
    pub fn new(ctx: &egui::Context, images_dir: PathBuf) -> Self {
        let (tx, rx) = unbounded();
        Images {
            images_dir,
            tx,
            rx,
            textures: HashMap::new(),
            ctx: ctx.clone(),
        }
    }

    fn spawn(&self, job: impl FnOnce() -> Done + Send + 'static) {
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("pocketvlm-image".into())
            .spawn(move || {
                let _ = tx.send(job());
                ctx.request_repaint();
            });
        if let Err(e) = spawned {
            // No thread: report it through the same channel the UI already reads.
            let _ = self.tx.send(Done::ImportFailed {
                attachment: 0,
                name: String::new(),
                error: format!("could not start an image worker: {e}"),
            });
        }
    }

    /// Imports an attachment: checks it is an image, copies it into the image folder and
    /// makes its thumbnail.
    pub fn import(&self, attachment: u64, source: Source) {
        let dir = self.images_dir.clone();
        self.spawn(move || {
            let name = source.display_name();
            match import(&dir, &source) {
                Ok((stored, thumb)) => Done::Imported {
                    attachment,
                    stored,
                    thumb,
                },
                Err(error) => Done::ImportFailed {
                    attachment,
                    name,
                    error,
                },
            }
        });
    }

    /// The texture of a stored image at `max_side`, decoding it in the background the
    /// first time it is asked for.
    pub fn texture(&mut self, name: &str, max_side: u32) -> &Texture {
        let key = TextureKey {
            name: name.to_string(),
            max_side,
        };
        if !self.textures.contains_key(&key) {
            self.textures.insert(key.clone(), Texture::Pending);
            let path = self.images_dir.join(name);
            self.spawn(move || {
                let image = std::fs::read(&path)
                    .map_err(|e| format!("could not read {}: {e}", path.display()))
                    .and_then(|bytes| {
                        decode_image(&bytes, &path)
                            .map_err(|e| e.to_string())
                            .map(|img| to_color_image(&fit(&img, max_side)))
                    });
                Done::Decoded { key, image }
            });
        }
        &self.textures[&TextureKey {
            name: name.to_string(),
            max_side,
        }]
    }

    /// Makes a texture for a thumbnail that an import produced.
    pub fn insert_thumbnail(&mut self, stored: &str, thumb: egui::ColorImage) {
        let handle = self.ctx.load_texture(
            format!("thumb-{stored}"),
            thumb,
            egui::TextureOptions::LINEAR,
        );
        self.textures.insert(
            TextureKey {
                name: stored.to_string(),
                max_side: THUMB_SIDE,
            },
            Texture::Ready(handle),
        );
    }

    /// Finished work: decoded textures are kept here; imports go back to the caller.
    pub fn poll(&mut self) -> Vec<Done> {
        let mut imports = Vec::new();
        while let Ok(done) = self.rx.try_recv() {
            match done {
                Done::Decoded { key, image } => {
                    let tex = match image {
                        Ok(img) => Texture::Ready(self.ctx.load_texture(
                            format!("img-{}-{}", key.name, key.max_side),
                            img,
                            egui::TextureOptions::LINEAR,
                        )),
                        Err(e) => Texture::Failed(e),
                    };
                    self.textures.insert(key, tex);
                }
                other => imports.push(other),
            }
        }
        imports
    }
}

/// Reads, validates and stores an attachment; returns the stored name and a thumbnail.
fn import(images_dir: &Path, source: &Source) -> Result<(String, egui::ColorImage), String> {
    let name = source.display_name();
    let (bytes, label): (Vec<u8>, PathBuf) = match source {
        Source::Path(p) => {
            if p.is_dir() {
                return Err(format!("{name} is a folder, not an image"));
            }
            let meta = std::fs::metadata(p).map_err(|e| format!("could not open {name}: {e}"))?;
            if meta.len() > pocketvlm_engine::image::DecodeLimits::default().max_bytes {
                return Err(format!("{name} is too large to be an image we can read"));
            }
            let bytes = std::fs::read(p).map_err(|e| format!("could not read {name}: {e}"))?;
            (bytes, p.clone())
        }
        Source::Bytes { bytes, .. } => (bytes.as_ref().clone(), PathBuf::from(&name)),
        Source::Pasted(img) => (encode_png(img)?, PathBuf::from("pasted image")),
    };
    let rgb = decode_image(&bytes, &label).map_err(|e| friendly_image_error(&name, &e))?;
    let extension = ::image::guess_format(&bytes)
        .ok()
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    let stored = super::store::store_image_in(images_dir, &bytes, extension)
        .map_err(|e| format!("could not copy {name} into the app's data folder: {e}"))?;
    Ok((stored, to_color_image(&fit(&rgb, THUMB_SIDE))))
}

fn friendly_image_error(name: &str, e: &pocketvlm_engine::Error) -> String {
    use pocketvlm_engine::error::ImageErrorKind;
    match e {
        pocketvlm_engine::Error::Image {
            kind: ImageErrorKind::Unsupported,
            ..
        } => format!("{name} is not an image PocketVLM can read (JPEG, PNG, GIF, BMP or WebP)"),
        pocketvlm_engine::Error::Image {
            kind: ImageErrorKind::Corrupt,
            ..
        } => format!("{name} looks like an image but is damaged or incomplete"),
        pocketvlm_engine::Error::Image {
            kind: ImageErrorKind::TooLarge,
            ..
        } => format!("{name} is too large (over 16384 pixels a side)"),
        other => format!("{name}: {other}"),
    }
}

fn encode_png(img: &egui::ColorImage) -> Result<Vec<u8>, String> {
    let [w, h] = img.size;
    let mut rgba = Vec::with_capacity(w * h * 4);
    for p in &img.pixels {
        rgba.extend_from_slice(&p.to_srgba_unmultiplied());
    }
    let buf = ::image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        .ok_or_else(|| "the pasted image has an inconsistent size".to_string())?;
    let mut out = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut out, ::image::ImageFormat::Png)
        .map_err(|e| format!("could not encode the pasted image: {e}"))?;
    Ok(out.into_inner())
}

/// `img` scaled down (never up) so its longest side is at most `max_side`.
fn fit(img: &RgbImage, max_side: u32) -> RgbImage {
    let long = img.width.max(img.height);
    if long <= max_side || long == 0 {
        return img.clone();
    }
    let scale = max_side as f64 / long as f64;
    let w = ((img.width as f64 * scale).round() as u32).max(1);
    let h = ((img.height as f64 * scale).round() as u32).max(1);
    resize_bicubic(img, w, h)
}

fn to_color_image(img: &RgbImage) -> egui::ColorImage {
    egui::ColorImage::from_rgb([img.width as usize, img.height as usize], &img.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_keeps_the_aspect_and_never_enlarges() {
        let img = RgbImage::filled(400, 200, [1, 2, 3]);
        let t = fit(&img, 100);
        assert_eq!((t.width, t.height), (100, 50));
        let small = RgbImage::filled(10, 20, [0, 0, 0]);
        assert_eq!(fit(&small, 100).width, 10);
    }

    #[test]
    fn importing_text_is_refused_with_a_clear_message() {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let src = Source::Bytes {
            name: "notes.txt".into(),
            bytes: Arc::new(b"just some text".to_vec()),
        };
        let err = import(&images, &src).unwrap_err();
        assert!(err.contains("notes.txt is not an image"), "{err}");
        assert_eq!(std::fs::read_dir(&images).unwrap().count(), 0);
    }

    #[test]
    fn pasted_pixels_are_stored_as_png() {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let img = egui::ColorImage::new([3, 2], vec![egui::Color32::RED; 6]);
        let (stored, thumb) = import(&images, &Source::Pasted(Arc::new(img))).unwrap();
        assert!(stored.ends_with(".png"), "{stored}");
        assert_eq!(thumb.size, [3, 2]);
    }
}
