//! The small part of ZIP that `torch.save` archives use: the end-of-central-directory record
//! (plain or ZIP64), the central directory, and local headers of STORED entries.
//!
//! torch.save writes entries uncompressed, 64-byte aligned, with data descriptors (so the
//! local headers carry zero sizes): sizes and offsets therefore come from the central
//! directory, and a local header is read only to find where its data starts. Nothing is
//! trusted: every offset and length is checked against the file before a byte is read, and
//! every failure is a reason string (the caller adds the file name).

use std::collections::HashMap;
use std::ops::Range;

const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: &[u8; 4] = b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIG: &[u8; 4] = b"PK\x06\x06";
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;
/// The longest ZIP comment, so the furthest the end record can sit from the end of the file.
const MAX_COMMENT: usize = 0xFFFF;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const METHOD_STORED: u16 = 0;
const FLAG_ENCRYPTED: u16 = 1;

/// One file in the archive, as the central directory describes it.
#[derive(Clone, Debug)]
pub(crate) struct ZipEntry {
    pub name: String,
    pub method: u16,
    flags: u16,
    compressed_size: u64,
    pub size: u64,
    local_header: u64,
}

/// A parsed central directory.
#[derive(Debug)]
pub(crate) struct ZipArchive {
    entries: Vec<ZipEntry>,
    by_name: HashMap<String, usize>,
    /// Where the central directory starts: entry data must end before it.
    central_start: u64,
}

/// `len` bytes at `at`, or None when they run past the end.
fn slice(bytes: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    bytes.get(at..at.checked_add(len)?)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(slice(bytes, at, 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(bytes, at, 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(slice(bytes, at, 8)?.try_into().ok()?))
}

fn method_name(method: u16) -> &'static str {
    match method {
        8 => "deflate",
        9 => "deflate64",
        12 => "bzip2",
        14 => "lzma",
        93 => "zstd",
        95 => "xz",
        _ => "unknown",
    }
}

/// The end-of-central-directory values that matter, after ZIP64 has been applied.
struct End {
    entries: u64,
    central_size: u64,
    central_offset: u64,
    /// Where the end records start: the central directory must lie before this.
    records_start: u64,
}

fn find_end(bytes: &[u8]) -> Result<End, String> {
    let truncated = || {
        "no ZIP end-of-central-directory record: the file is truncated or not a zip archive"
            .to_string()
    };
    if bytes.len() < EOCD_LEN {
        return Err(format!(
            "file is {} bytes, too short for a zip archive (truncated?)",
            bytes.len()
        ));
    }
    // The record is 22 bytes plus a comment of up to 64 KiB; scan back from the end for a
    // signature whose comment length reaches exactly the end of the file.
    let last = bytes.len() - EOCD_LEN;
    let first = last.saturating_sub(MAX_COMMENT);
    let pos = (first..=last)
        .rev()
        .find(|&p| {
            &bytes[p..p + 4] == EOCD_SIG
                && u16_at(bytes, p + 20).is_some_and(|c| p + EOCD_LEN + c as usize == bytes.len())
        })
        .ok_or_else(truncated)?;
    let field16 = |off| u16_at(bytes, pos + off).ok_or_else(truncated);
    let field32 = |off| u32_at(bytes, pos + off).ok_or_else(truncated);
    let (disk, central_disk) = (field16(4)?, field16(6)?);
    let (disk_entries, entries) = (field16(8)?, field16(10)?);
    let (central_size, central_offset) = (field32(12)?, field32(16)?);

    let has_locator = pos >= ZIP64_LOCATOR_LEN
        && &bytes[pos - ZIP64_LOCATOR_LEN..pos - ZIP64_LOCATOR_LEN + 4] == ZIP64_LOCATOR_SIG;
    if !has_locator {
        if entries == 0xFFFF || central_size == u32::MAX || central_offset == u32::MAX {
            return Err("the end record has ZIP64 placeholders but no ZIP64 locator".into());
        }
        if disk != 0 || central_disk != 0 || disk_entries != entries {
            return Err("multi-disk zip archives are not supported".into());
        }
        return Ok(End {
            entries: entries.into(),
            central_size: central_size.into(),
            central_offset: central_offset.into(),
            records_start: pos as u64,
        });
    }

    // ZIP64 (torch uses it for archives over 4 GiB): the locator, just before the end
    // record, points at the ZIP64 end record, whose 64-bit fields replace the 16/32-bit ones.
    let locator = pos - ZIP64_LOCATOR_LEN;
    let bad_locator = || "the ZIP64 locator is damaged".to_string();
    let record_disk = u32_at(bytes, locator + 4).ok_or_else(bad_locator)?;
    let record_at = u64_at(bytes, locator + 8).ok_or_else(bad_locator)?;
    let disks = u32_at(bytes, locator + 16).ok_or_else(bad_locator)?;
    if record_disk != 0 || disks > 1 {
        return Err("multi-disk zip archives are not supported".into());
    }
    let record = usize::try_from(record_at)
        .ok()
        .filter(|&r| r.checked_add(ZIP64_EOCD_LEN).is_some_and(|e| e <= locator))
        .ok_or_else(|| {
            format!("the ZIP64 end record offset {record_at} lies outside the file (truncated?)")
        })?;
    if &bytes[record..record + 4] != ZIP64_EOCD_SIG {
        return Err(format!(
            "no ZIP64 end record at offset {record} where the locator points"
        ));
    }
    let f32_ = |off| u32_at(bytes, record + off).ok_or_else(bad_locator);
    let f64_ = |off| u64_at(bytes, record + off).ok_or_else(bad_locator);
    let (disk, central_disk) = (f32_(16)?, f32_(20)?);
    let (disk_entries, entries) = (f64_(24)?, f64_(32)?);
    if disk != 0 || central_disk != 0 || disk_entries != entries {
        return Err("multi-disk zip archives are not supported".into());
    }
    Ok(End {
        entries,
        central_size: f64_(40)?,
        central_offset: f64_(48)?,
        records_start: record as u64,
    })
}

impl ZipArchive {
    /// Reads the central directory of the archive held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let end = find_end(bytes)?;
        let central_end = end
            .central_offset
            .checked_add(end.central_size)
            .filter(|&e| e <= end.records_start)
            .ok_or_else(|| {
                format!(
                    "the central directory [{}, +{}) lies outside the file (truncated?)",
                    end.central_offset, end.central_size
                )
            })?;
        // Every entry takes at least 46 bytes, which bounds what the count may claim
        // before anything is allocated for it.
        if end.entries > end.central_size / CENTRAL_LEN as u64 {
            return Err(format!(
                "the end record claims {} entries but the central directory has only {} bytes",
                end.entries, end.central_size
            ));
        }
        // Both fit in usize: they are within the file, which is in memory.
        let central = &bytes[end.central_offset as usize..central_end as usize];
        let mut entries = Vec::with_capacity(end.entries as usize);
        let mut by_name = HashMap::new();
        let mut at = 0usize;
        for i in 0..end.entries {
            let entry = parse_central_entry(central, &mut at)
                .map_err(|e| format!("central directory entry {i}: {e}"))?;
            if by_name.insert(entry.name.clone(), entries.len()).is_some() {
                // Two entries with one name could make readers disagree on the content.
                return Err(format!("entry `{}` appears twice", entry.name));
            }
            entries.push(entry);
        }
        Ok(ZipArchive {
            entries,
            by_name,
            central_start: end.central_offset,
        })
    }

    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    pub fn find(&self, name: &str) -> Option<&ZipEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The byte range of a stored entry's data within `bytes` (the whole archive).
    pub fn data_range(&self, bytes: &[u8], entry: &ZipEntry) -> Result<Range<usize>, String> {
        let name = &entry.name;
        if entry.flags & FLAG_ENCRYPTED != 0 {
            return Err(format!("entry `{name}` is encrypted"));
        }
        if entry.method != METHOD_STORED {
            return Err(format!(
                "entry `{name}` is compressed ({}, method {}); only stored entries are supported \
                 (torch.save writes them uncompressed; re-save the checkpoint with torch.save)",
                method_name(entry.method),
                entry.method
            ));
        }
        if entry.compressed_size != entry.size {
            return Err(format!(
                "entry `{name}` is stored but its compressed size {} differs from its size {}",
                entry.compressed_size, entry.size
            ));
        }
        let outside = || {
            format!(
                "entry `{name}`: local header at {} lies outside the file (truncated?)",
                entry.local_header
            )
        };
        let header = usize::try_from(entry.local_header).map_err(|_| outside())?;
        let fixed = slice(bytes, header, LOCAL_LEN).ok_or_else(outside)?;
        if &fixed[..4] != LOCAL_SIG {
            return Err(format!(
                "entry `{name}`: no local header signature at offset {header}"
            ));
        }
        let name_len = u16_at(fixed, 26).ok_or_else(outside)? as usize;
        let extra_len = u16_at(fixed, 28).ok_or_else(outside)? as usize;
        let local_name = slice(bytes, header + LOCAL_LEN, name_len).ok_or_else(outside)?;
        if local_name != name.as_bytes() {
            return Err(format!(
                "entry `{name}`: its local header names `{}`",
                String::from_utf8_lossy(local_name)
            ));
        }
        // Only the lengths of the local name and extra field matter (the extra field is
        // where torch puts its alignment padding); sizes come from the central directory.
        let start = header + LOCAL_LEN + name_len + extra_len;
        let end = (start as u64)
            .checked_add(entry.size)
            .filter(|&e| e <= self.central_start && e <= bytes.len() as u64)
            .ok_or_else(|| {
                format!(
                    "entry `{name}`: {} bytes of data at offset {start} run past the data area \
                     ({} bytes; truncated?)",
                    entry.size, self.central_start
                )
            })?;
        Ok(start..end as usize)
    }
}

/// One central directory record at `*at`, advancing `*at` past it.
fn parse_central_entry(central: &[u8], at: &mut usize) -> Result<ZipEntry, String> {
    let short = || "runs past the end of the central directory".to_string();
    let fixed = slice(central, *at, CENTRAL_LEN).ok_or_else(short)?;
    if &fixed[..4] != CENTRAL_SIG {
        return Err("bad signature".into());
    }
    let f16 = |off| u16_at(fixed, off).ok_or_else(short);
    let f32_ = |off| u32_at(fixed, off).ok_or_else(short);
    let flags = f16(8)?;
    let method = f16(10)?;
    let compressed32 = f32_(20)?;
    let size32 = f32_(24)?;
    let name_len = f16(28)? as usize;
    let extra_len = f16(30)? as usize;
    let comment_len = f16(32)? as usize;
    let disk = f16(34)?;
    let header32 = f32_(42)?;

    let name_at = *at + CENTRAL_LEN;
    let name = slice(central, name_at, name_len).ok_or_else(short)?;
    let name = std::str::from_utf8(name)
        .map_err(|_| "the entry name is not UTF-8".to_string())?
        .to_string();
    let extra = slice(central, name_at + name_len, extra_len).ok_or_else(short)?;
    slice(central, name_at + name_len + extra_len, comment_len).ok_or_else(short)?;
    *at = name_at + name_len + extra_len + comment_len;

    // A 32-bit field set to all ones means "the real value is in the ZIP64 extra field",
    // which lists only those fields, in this order.
    let mut size = u64::from(size32);
    let mut compressed = u64::from(compressed32);
    let mut header = u64::from(header32);
    let needs_zip64 = size32 == u32::MAX || compressed32 == u32::MAX || header32 == u32::MAX;
    if needs_zip64 {
        let z = zip64_extra(extra)
            .ok_or_else(|| format!("`{name}` needs a ZIP64 extra field but has none"))?;
        let mut k = 0;
        let mut next = |present: bool, value: &mut u64| -> Result<(), String> {
            if present {
                *value = u64_at(z, k)
                    .ok_or_else(|| format!("`{name}`: the ZIP64 extra field is too short"))?;
                k += 8;
            }
            Ok(())
        };
        next(size32 == u32::MAX, &mut size)?;
        next(compressed32 == u32::MAX, &mut compressed)?;
        next(header32 == u32::MAX, &mut header)?;
    }
    if disk != 0 && disk != 0xFFFF {
        return Err(format!("`{name}` is on disk {disk} (multi-disk archive)"));
    }
    Ok(ZipEntry {
        name,
        method,
        flags,
        compressed_size: compressed,
        size,
        local_header: header,
    })
}

/// The data of the ZIP64 extended-information field among `extra`'s (id, size, data) fields.
fn zip64_extra(extra: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = u16_at(extra, at)?;
        let len = u16_at(extra, at + 2)? as usize;
        let data = slice(extra, at + 4, len)?;
        if id == ZIP64_EXTRA_ID {
            return Some(data);
        }
        at += 4 + len;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a zip archive the way torch.save does (stored entries, data descriptors, data
    /// aligned to 64 bytes with padding in the local extra field), optionally with ZIP64
    /// records everywhere. Each entry is (name, data, method).
    pub(crate) fn build_zip(entries: &[(&str, &[u8], u16)], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for &(name, data, method) in entries {
            let header = out.len();
            let base = header + LOCAL_LEN + name.len() + 4;
            let pad = (64 - base % 64) % 64;
            out.extend_from_slice(LOCAL_SIG);
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&0x808u16.to_le_bytes());
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 4]); // time, date
            out.extend_from_slice(&[0; 12]); // crc, sizes (in the data descriptor)
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&((4 + pad) as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"FB");
            out.extend_from_slice(&(pad as u16).to_le_bytes());
            out.extend(std::iter::repeat_n(b'Z', pad));
            assert_eq!(out.len() % 64, 0);
            out.extend_from_slice(data);
            out.extend_from_slice(b"PK\x07\x08");
            out.extend_from_slice(&[0; 12]);

            let (size32, header32, extra) = if zip64 {
                let mut e = ZIP64_EXTRA_ID.to_le_bytes().to_vec();
                e.extend_from_slice(&24u16.to_le_bytes());
                e.extend_from_slice(&(data.len() as u64).to_le_bytes());
                e.extend_from_slice(&(data.len() as u64).to_le_bytes());
                e.extend_from_slice(&(header as u64).to_le_bytes());
                (u32::MAX, u32::MAX, e)
            } else {
                (data.len() as u32, header as u32, Vec::new())
            };
            central.extend_from_slice(CENTRAL_SIG);
            central.extend_from_slice(&[20, 0, 20, 0]);
            central.extend_from_slice(&0x808u16.to_le_bytes());
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]); // time, date, crc
            central.extend_from_slice(&size32.to_le_bytes());
            central.extend_from_slice(&size32.to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
            central.extend_from_slice(&[0; 4]); // external attributes
            central.extend_from_slice(&header32.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
            central.extend_from_slice(&extra);
        }
        let central_at = out.len();
        out.extend_from_slice(&central);
        let n = entries.len();
        if zip64 {
            let record_at = out.len();
            out.extend_from_slice(ZIP64_EOCD_SIG);
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0]);
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&(central_at as u64).to_le_bytes());
            out.extend_from_slice(ZIP64_LOCATOR_SIG);
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(record_at as u64).to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(EOCD_SIG);
        out.extend_from_slice(&[0; 4]);
        let (count, size, offset) = if zip64 {
            (0xFFFF, u32::MAX, u32::MAX)
        } else {
            (n as u16, central.len() as u32, central_at as u32)
        };
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
        let z = ZipArchive::parse(bytes)?;
        z.entries()
            .iter()
            .map(|e| Ok((e.name.clone(), bytes[z.data_range(bytes, e)?].to_vec())))
            .collect()
    }

    #[test]
    fn reads_plain_and_zip64_archives() {
        let entries: &[(&str, &[u8], u16)] =
            &[("a/data.pkl", b"\x80\x02N.", 0), ("a/data/0", &[7; 100], 0)];
        for zip64 in [false, true] {
            let bytes = build_zip(entries, zip64);
            let got = read_all(&bytes).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], ("a/data.pkl".to_string(), b"\x80\x02N.".to_vec()));
            assert_eq!(got[1].1, vec![7; 100]);
            let z = ZipArchive::parse(&bytes).unwrap();
            let r = z.data_range(&bytes, z.find("a/data/0").unwrap()).unwrap();
            assert_eq!(r.start % 64, 0, "torch-style alignment is kept");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for zip64 in [false, true] {
            let bytes = build_zip(&[("a/data.pkl", b"\x80\x02N.", 0)], zip64);
            for cut in 0..bytes.len() {
                assert!(
                    read_all(&bytes[..cut]).is_err(),
                    "cut at {cut} (zip64 {zip64})"
                );
            }
        }
    }

    #[test]
    fn compressed_entries_are_refused_with_the_method() {
        let bytes = build_zip(&[("a/data.pkl", b"xx", 8)], false);
        let z = ZipArchive::parse(&bytes).unwrap();
        let e = z.data_range(&bytes, &z.entries()[0]).unwrap_err();
        assert!(e.contains("compressed (deflate, method 8)"), "{e}");
    }

    #[test]
    fn lying_offsets_and_counts_are_errors() {
        let good = build_zip(&[("a/data.pkl", b"\x80\x02N.", 0)], false);
        let eocd = good.len() - EOCD_LEN;
        let central = u32_at(&good, eocd + 16).unwrap() as usize;
        let patch = |at: usize, val: &[u8]| {
            let mut b = good.clone();
            b[at..at + val.len()].copy_from_slice(val);
            b
        };
        let cases = [
            patch(eocd + 10, &0xFFF0u16.to_le_bytes()), // entry count
            patch(eocd + 8, &3u16.to_le_bytes()),       // entries on this disk
            patch(eocd + 12, &u32::MAX.to_le_bytes()),  // zip64 placeholder
            patch(eocd + 12, &0x7FFF_FFFFu32.to_le_bytes()), // central size
            patch(eocd + 16, &0x7FFF_FFFFu32.to_le_bytes()), // central offset
            patch(central, b"PK\x09\x09"),              // central signature
            patch(central + 24, &0x7FFF_FFFFu32.to_le_bytes()), // size
            patch(central + 20, &0x7FFF_FFFFu32.to_le_bytes()), // compressed size
            patch(central + 42, &0x7FFF_FFFFu32.to_le_bytes()), // local header offset
            patch(central + 42, &u32::MAX.to_le_bytes()), // zip64 offset without extra
            patch(central + 28, &0xFFFFu16.to_le_bytes()), // name length
            patch(central + 30, &0xFFFFu16.to_le_bytes()), // extra length
            patch(central + 46, b"b"),                  // name differs from the local one
            patch(0, b"PK\x09\x09"),                    // local signature
            patch(28, &0xFFFFu16.to_le_bytes()),        // local extra length
            patch(central + 8, &1u16.to_le_bytes()),    // encrypted
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(read_all(c).is_err(), "case {i} was accepted");
        }
        let dup = build_zip(&[("a/x", b"1", 0), ("a/x", b"2", 0)], false);
        assert!(ZipArchive::parse(&dup).unwrap_err().contains("twice"));
    }

    #[test]
    fn damaged_zip64_records_are_errors() {
        let good = build_zip(&[("a/data.pkl", b"\x80\x02N.", 0)], true);
        let locator = good.len() - EOCD_LEN - ZIP64_LOCATOR_LEN;
        let record = u64_at(&good, locator + 8).unwrap() as usize;
        let patch = |at: usize, val: &[u8]| {
            let mut b = good.clone();
            b[at..at + val.len()].copy_from_slice(val);
            b
        };
        let cases = [
            patch(locator + 8, &u64::MAX.to_le_bytes()),
            patch(locator + 8, &(locator as u64).to_le_bytes()),
            patch(locator + 4, &1u32.to_le_bytes()),
            patch(record, b"PK\x09\x09"),
            patch(record + 32, &u64::MAX.to_le_bytes()),
            patch(record + 24, &5u64.to_le_bytes()),
            patch(record + 40, &u64::MAX.to_le_bytes()),
            patch(record + 48, &u64::MAX.to_le_bytes()),
            patch(record + 48, &(u64::MAX - 3).to_le_bytes()),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(read_all(c).is_err(), "case {i} was accepted");
        }
    }
}
