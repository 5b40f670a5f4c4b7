//! The app's files under its data folder:
//!
//! ```text
//! settings.json              app settings (recent models, load options, panels)
//! conversations/<id>.json    one file per conversation
//! images/<hash>.<ext>        every attached image, copied in (named by content)
//! ```
//!
//! Every file is written whole or not at all: to a temporary file beside it, flushed to
//! disk, then renamed over the old one. Each JSON file carries a `version`; one that cannot
//! be read, or comes from a newer PocketVLM, is moved aside (`<name>.unreadable-<time>` or
//! `<name>.newer-v<N>-<time>`) and reported, never silently dropped or overwritten.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::conversation::Conversation;
use super::format::now_unix;

/// The version of the files this build writes (and the newest it reads).
pub const FORMAT_VERSION: u64 = 1;

pub struct Store {
    root: PathBuf,
}

/// Something wrong with a file that the user should hear about.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem(pub String);

impl Store {
    /// Opens (creating if needed) the data folder.
    pub fn open(root: &Path) -> io::Result<Store> {
        fs::create_dir_all(root.join("conversations"))?;
        fs::create_dir_all(root.join("images"))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn image_path(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    fn conversation_path(&self, id: &str) -> PathBuf {
        self.root.join("conversations").join(format!("{id}.json"))
    }

    /// Every readable conversation, newest first, and the problems with the others.
    pub fn load_conversations(&self) -> (Vec<Conversation>, Vec<Problem>) {
        let dir = self.root.join("conversations");
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem(format!("could not list {}: {e}", dir.display())));
                return (out, problems);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // Left by a write that never finished; the file it was for is intact.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match read_versioned::<Conversation>(&path) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(p) => problems.push(p),
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.updated_unix));
        (out, problems)
    }

    pub fn save_conversation(&self, c: &Conversation) -> io::Result<()> {
        write_json(&self.conversation_path(&c.id), c)
    }

    pub fn delete_conversation(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.conversation_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The settings, or defaults (with the problem) when the file is missing or unusable.
    pub fn load_settings<T: DeserializeOwned + Default>(&self) -> (T, Option<Problem>) {
        match read_versioned(&self.root.join("settings.json")) {
            Ok(Some(s)) => (s, None),
            Ok(None) => (T::default(), None),
            Err(p) => (T::default(), Some(p)),
        }
    }

    pub fn save_settings<T: Serialize>(&self, settings: &T) -> io::Result<()> {
        write_json(&self.root.join("settings.json"), settings)
    }

    /// Copies image bytes into the image folder under a name made of their hash; returns
    /// the name. The same image attached twice is stored once.
    pub fn store_image(&self, bytes: &[u8], extension: &str) -> io::Result<String> {
        store_image_in(&self.images_dir(), bytes, extension)
    }

    /// Deletes stored images that no conversation refers to.
    pub fn remove_unused_images<'a>(&self, used: impl Iterator<Item = &'a str>) {
        let used: std::collections::HashSet<&str> = used.collect();
        if let Ok(entries) = fs::read_dir(self.images_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !used.contains(name.as_str()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// [`Store::store_image`] for an image folder (the image workers have no `Store`).
pub fn store_image_in(images_dir: &Path, bytes: &[u8], extension: &str) -> io::Result<String> {
    let name = format!("{:016x}.{extension}", fnv1a(bytes));
    let path = images_dir.join(&name);
    if !path.exists() {
        write_atomic(&path, bytes)?;
    }
    Ok(name)
}

/// FNV-1a, 64 bits: a stable content hash for image file names (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `value` with a `version` field, pretty-printed.
fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut json = serde_json::to_value(value).map_err(io::Error::other)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("version".into(), FORMAT_VERSION.into());
    }
    let text = serde_json::to_vec_pretty(&json).map_err(io::Error::other)?;
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// a temporary file beside it, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a versioned JSON file. `Ok(None)`: it does not exist. A file that cannot be read
/// as this build's format is moved aside and reported.
fn read_versioned<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Problem> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Problem(format!("could not read {}: {e}", path.display()))),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Err(set_aside(
                path,
                "unreadable",
                &format!("it is not valid JSON ({e})"),
            ));
        }
    };
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        None => Err(set_aside(path, "unreadable", "it has no format version")),
        Some(v) if v > FORMAT_VERSION => Err(set_aside(
            path,
            &format!("newer-v{v}"),
            &format!(
                "it was written by a newer PocketVLM (format {v}; this one reads up to {FORMAT_VERSION})"
            ),
        )),
        Some(_) => serde_json::from_value(value).map(Some).map_err(|e| {
            set_aside(
                path,
                "unreadable",
                &format!("its contents do not fit ({e})"),
            )
        }),
    }
}

/// Moves an unusable file out of the way and says where it went.
fn set_aside(path: &Path, tag: &str, why: &str) -> Problem {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let backup = path.with_file_name(format!("{name}.{tag}-{}", now_unix()));
    match fs::rename(path, &backup) {
        Ok(()) => Problem(format!(
            "{name} could not be opened: {why}. It was kept as {}.",
            backup.display()
        )),
        Err(e) => Problem(format!(
            "{name} could not be opened: {why}; moving it aside failed too ({e})."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::conversation::{ChatMessage, GenerationSettings, new_id};

    #[test]
    fn conversations_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut c = Conversation::new(new_id(), GenerationSettings::default());
        c.messages
            .push(ChatMessage::user("hello", vec!["a.png".into()]));
        store.save_conversation(&c).unwrap();
        let (loaded, problems) = store.load_conversations();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(loaded, vec![c]);
    }

    #[test]
    fn corrupt_and_future_files_are_set_aside_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let dir = tmp.path().join("conversations");
        fs::write(dir.join("bad.json"), b"{\"version\": 1, \"id\": ").unwrap();
        fs::write(dir.join("future.json"), b"{\"version\": 99}").unwrap();
        let (loaded, problems) = store.load_conversations();
        assert!(loaded.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("bad.json.unreadable-")),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("future.json.newer-v99-")),
            "{names:?}"
        );
        assert!(problems.iter().any(|p| p.0.contains("newer PocketVLM")));
    }

    #[test]
    fn leftover_temporary_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let dir = tmp.path().join("conversations");
        fs::write(dir.join(".x.json.123.tmp"), b"{\"vers").unwrap();
        let (loaded, problems) = store.load_conversations();
        assert!(loaded.is_empty() && problems.is_empty());
    }

    #[test]
    fn images_are_stored_once_by_content() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let a = store.store_image(b"abc", "png").unwrap();
        let b = store.store_image(b"abc", "png").unwrap();
        assert_eq!(a, b);
        store.remove_unused_images(std::iter::empty());
        assert!(!store.image_path(&a).exists());
    }
}
