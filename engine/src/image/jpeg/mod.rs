//! A JPEG decoder whose output is bit-identical to PIL's `Image.open(f).convert("RGB")`,
//! i.e. to libjpeg-turbo with PIL's settings: accurate integer IDCT (`JDCT_ISLOW`, in the
//! arithmetic of libjpeg-turbo's x86 SIMD code, which PIL runs; see `idct.rs`), fancy
//! (triangle-filter) chroma upsampling, libjpeg's YCbCr → RGB tables, block smoothing of
//! incompletely refined progressive files, and for CMYK PIL's inverted reading ("CMYK;I")
//! and its own CMYK → RGB formula. PIL never gets libjpeg's merged upsampling (jdmerge.c,
//! other rounding): libjpeg only merges when fancy upsampling is off.
//!
//! Supported: baseline and extended sequential (SOF0/SOF1) and progressive (SOF2)
//! Huffman-coded 8-bit JPEGs with 1 (grey), 3 (YCbCr, or RGB by Adobe transform 0 or
//! component ids "RGB") or 4 (CMYK, or YCCK by Adobe transform 2) components, any
//! sampling factors libjpeg accepts (integral ratios), restart intervals, and multi-scan
//! sequential files. Arithmetic-coded, 12-bit, lossless and hierarchical JPEGs, 2
//! components and fractional sampling ratios are refused as `Unsupported` (of these, PIL
//! decodes arithmetic-coded and 8-bit lossless files, and refuses the others too).
//!
//! Errors follow what PIL does with the same bytes: where libjpeg fails, or where the data
//! ends before the end-of-image marker (PIL: "image file is truncated"), we fail with
//! `Corrupt`; where libjpeg only warns (damaged entropy-coded data, restart markers out of
//! sequence, garbage between markers), we decode what libjpeg decodes. One deliberate
//! difference: a single-scan file whose scan is complete but whose data after the scan
//! never reaches the end-of-image marker (say, damage turned a few bytes into a marker
//! whose length runs past the end) is refused, like a truncated file; PIL returns its
//! pixels, because libjpeg reads those markers only after the last scanline. Every
//! dimension is checked against the caller's limits (`Header::width`, `height`,
//! `decoded_bytes`) before any image-sized buffer is allocated.
//!
//! The decoding order mirrors libjpeg: a single-scan file is decoded one MCU row at a
//! time straight to pixels; a progressive or multi-scan file into a coefficient buffer,
//! transformed once the end-of-image marker is reached. Either way, pixels are produced
//! one iMCU row (8 × the largest vertical sampling factor rows) behind the transform, so
//! the triangle filter can see the rows above and below; only three iMCU rows of samples
//! per component are kept.

mod color;
mod huffman;
mod idct;
mod input;
mod smooth;
mod tables;

use crate::error::ImageErrorKind;
use color::{Rows, Upsample, YccTables};
use huffman::{Block, EntropyState, HuffTable};
use input::Input;
use tables::HuffSpec;

/// Why a JPEG could not be decoded; `decode.rs` adds the file name.
#[derive(Debug)]
pub(crate) struct JpegError {
    pub(crate) kind: ImageErrorKind,
    pub(crate) reason: String,
}

type Result<T> = std::result::Result<T, JpegError>;

fn corrupt(reason: impl Into<String>) -> JpegError {
    JpegError {
        kind: ImageErrorKind::Corrupt,
        reason: reason.into(),
    }
}

fn unsupported(reason: impl Into<String>) -> JpegError {
    JpegError {
        kind: ImageErrorKind::Unsupported,
        reason: reason.into(),
    }
}

fn truncated() -> JpegError {
    corrupt("the JPEG data is truncated (it ends before the end-of-image marker)")
}

/// libjpeg's largest supported dimension (`JPEG_MAX_DIMENSION`).
const MAX_DIMENSION: u32 = 65500;
/// libjpeg's limit on blocks in one MCU (`D_MAX_BLOCKS_IN_MCU`).
const MAX_BLOCKS_IN_MCU: usize = 10;

/// The colour space of the coded components, guessed as libjpeg guesses it
/// (`default_decompress_parms`) from the markers before the first scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColorSpace {
    Grey,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    /// Quantisation table slot named by the frame header.
    tq: usize,
    /// Blocks holding image samples.
    width_in_blocks: usize,
    height_in_blocks: usize,
    /// Blocks of the MCU grid (the above rounded up to the sampling factors): interleaved
    /// scans code these dummy blocks too.
    padded_width: usize,
    padded_height: usize,
    /// Samples of the component (before upsampling).
    width: usize,
    height: usize,
    /// The quantisation table, copied when the component's first scan starts (libjpeg
    /// latches it then; a later DQT redefining the slot does not apply).
    quant: Option<[u16; 64]>,
    /// Huffman table slots named by the current scan.
    dc_table: usize,
    ac_table: usize,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    components: Vec<Component>,
    max_h: usize,
    max_v: usize,
    mcus_x: usize,
    /// iMCU rows: the image height in units of 8 × `max_v`.
    imcu_rows: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

struct Scan {
    /// Component indices, in scan order.
    components: Vec<usize>,
    ss: u8,
    se: u8,
    ah: u8,
    al: u8,
}

/// A scan ready to decode: its MCU layout and tables.
struct ScanPlan {
    kind: ScanKind,
    components: Vec<usize>,
    band: (u8, u8, u8),
    mcus_x: usize,
    mcus_y: usize,
    /// For each block of an MCU: (scan slot, column, row) within the MCU.
    blocks: Vec<(usize, usize, usize)>,
    dc: Vec<Option<Box<HuffTable>>>,
    ac: Vec<Option<Box<HuffTable>>>,
}

enum Next {
    Scan(Scan),
    EndOfImage,
}

/// A JPEG whose headers have been read up to the first scan: its size is known, nothing
/// image-sized is allocated yet.
pub(crate) struct Header<'a> {
    input: Input<'a>,
    frame: Frame,
    color: ColorSpace,
    exif: Option<&'a [u8]>,
    dc_specs: [Option<HuffSpec>; 4],
    ac_specs: [Option<HuffSpec>; 4],
    quant_specs: [Option<[u16; 64]>; 4],
    restart_interval: usize,
    /// SOS markers read so far (libjpeg's `input_scan_number`).
    scans_read: u32,
    first_scan: Scan,
}

/// Reads the markers up to the first scan (libjpeg's `jpeg_read_header`).
pub(crate) fn read_header(data: &[u8]) -> Result<Header<'_>> {
    let mut input = Input::new(data);
    input.first_marker()?;
    let mut state = Markers::default();
    match state.read(&mut input, None, true)? {
        Next::Scan(scan) => {
            let frame = state
                .frame
                .ok_or_else(|| corrupt("the JPEG has a scan before its frame header"))?;
            let color = guess_color_space(&frame, state.jfif, state.adobe_transform);
            let mut header = Header {
                input,
                frame,
                color,
                exif: state.exif,
                dc_specs: state.dc_specs,
                ac_specs: state.ac_specs,
                quant_specs: state.quant_specs,
                restart_interval: state.restart_interval,
                scans_read: state.scans_read,
                first_scan: scan,
            };
            if !header.frame.progressive {
                // libjpeg's sequential decoder installs the standard tables in slots 0
                // and 1 when the file defines none there (Motion-JPEG frames).
                for slot in 0..2 {
                    header.dc_specs[slot].get_or_insert_with(|| HuffSpec::standard_dc(slot));
                    header.ac_specs[slot].get_or_insert_with(|| HuffSpec::standard_ac(slot));
                }
            }
            Ok(header)
        }
        Next::EndOfImage => Err(corrupt("the JPEG has no image (it ends before any scan)")),
    }
}

/// libjpeg's guess (`default_decompress_parms`): a JFIF marker means YCbCr; otherwise an
/// Adobe marker's transform; otherwise component ids "R", "G", "B" mean RGB.
fn guess_color_space(frame: &Frame, jfif: bool, adobe: Option<u8>) -> ColorSpace {
    match frame.components.len() {
        1 => ColorSpace::Grey,
        3 => {
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            if jfif {
                ColorSpace::YCbCr
            } else if let Some(transform) = adobe {
                if transform == 0 {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            } else if ids == b"RGB" {
                ColorSpace::Rgb
            } else {
                ColorSpace::YCbCr
            }
        }
        _ => match adobe {
            Some(0) | None => ColorSpace::Cmyk,
            Some(_) => ColorSpace::Ycck,
        },
    }
}

/// State gathered from marker segments.
#[derive(Default)]
struct Markers<'a> {
    frame: Option<Frame>,
    dc_specs: [Option<HuffSpec>; 4],
    ac_specs: [Option<HuffSpec>; 4],
    quant_specs: [Option<[u16; 64]>; 4],
    restart_interval: usize,
    jfif: bool,
    adobe_transform: Option<u8>,
    exif: Option<&'a [u8]>,
    scans_read: u32,
}

impl<'a> Markers<'a> {
    /// Processes markers until a scan or the end of the image (libjpeg's `read_markers`).
    /// `frame` is the frame once known (after the first scan, it lives in the header);
    /// `in_header` is true before the first scan, where APP segments matter.
    fn read(
        &mut self,
        input: &mut Input<'a>,
        mut frame: Option<&mut Frame>,
        in_header: bool,
    ) -> Result<Next> {
        loop {
            let marker = input.read_marker()?;
            match marker {
                0xD8 => return Err(corrupt("the JPEG has a second start-of-image marker")),
                0xC0..=0xC2 => {
                    if frame.is_some() || self.frame.is_some() {
                        return Err(corrupt("the JPEG has two frame headers"));
                    }
                    self.frame = Some(read_frame(input, marker == 0xC2)?);
                }
                0xC3 | 0xC5..=0xC7 | 0xC8 | 0xCB | 0xCD..=0xCF => {
                    return Err(unsupported(
                        "lossless, hierarchical and extension JPEGs are not supported",
                    ));
                }
                0xC9..=0xCA => {
                    return Err(unsupported("arithmetic-coded JPEGs are not supported"));
                }
                0xDA => {
                    let frame = match (frame.as_deref_mut(), self.frame.as_mut()) {
                        (Some(f), _) | (None, Some(f)) => f,
                        (None, None) => {
                            return Err(corrupt("the JPEG has a scan before its frame header"));
                        }
                    };
                    self.scans_read += 1;
                    return read_scan(input, frame).map(Next::Scan);
                }
                0xD9 => return Ok(Next::EndOfImage),
                0xC4 => self.read_huffman_tables(input)?,
                0xDB => self.read_quant_tables(input)?,
                0xDD => {
                    if input.u16()? != 4 {
                        return Err(corrupt("a restart interval segment has a bad length"));
                    }
                    self.restart_interval = usize::from(input.u16()?);
                }
                0xE0..=0xEF | 0xFE | 0xCC | 0xDC => {
                    // APPn, COM, DAC (arithmetic conditioning: unused by Huffman files),
                    // DNL (ignored, as libjpeg does). libjpeg tolerates a length under
                    // 2 (it reads just the length).
                    let len = usize::from(input.u16()?).saturating_sub(2);
                    let data = input.bytes(len)?;
                    if in_header {
                        self.app_segment(marker, data);
                    }
                }
                0xD0..=0xD7 | 0x01 => {} // parameterless: RSTn, TEM
                _ => {
                    return Err(corrupt(format!(
                        "the JPEG contains an unknown marker 0xFF{marker:02X}"
                    )));
                }
            }
        }
    }

    fn app_segment(&mut self, marker: u8, data: &'a [u8]) {
        match marker {
            // libjpeg looks at the first 14 bytes of APP0 and 12 of APP14.
            0xE0 if data.len() >= 14 && data.starts_with(b"JFIF\0") => self.jfif = true,
            0xEE if data.len() >= 12 && data.starts_with(b"Adobe") => {
                self.adobe_transform = Some(data[11]);
            }
            // PIL reads the orientation from the first Exif segment.
            0xE1 if self.exif.is_none() && data.starts_with(b"Exif\0\0") => {
                self.exif = Some(&data[6..]);
            }
            _ => {}
        }
    }

    fn read_huffman_tables(&mut self, input: &mut Input) -> Result<()> {
        let bad = || corrupt("a Huffman table segment is invalid");
        let mut left = i64::from(input.u16()?) - 2;
        while left > 16 {
            let index = input.byte()?;
            let mut counts = [0u8; 16];
            for c in &mut counts {
                *c = input.byte()?;
            }
            let count: usize = counts.iter().map(|&c| usize::from(c)).sum();
            left -= 17;
            if count > 256 || count as i64 > left {
                return Err(bad());
            }
            let symbols = input.bytes(count)?.to_vec();
            left -= count as i64;
            let slot = usize::from(index & 0x0F);
            if index & 0xE0 != 0 || slot >= 4 {
                return Err(bad());
            }
            let spec = Some(HuffSpec { counts, symbols });
            if index & 0x10 != 0 {
                self.ac_specs[slot] = spec;
            } else {
                self.dc_specs[slot] = spec;
            }
        }
        if left != 0 {
            return Err(bad());
        }
        Ok(())
    }

    fn read_quant_tables(&mut self, input: &mut Input) -> Result<()> {
        let bad = || corrupt("a quantisation table segment is invalid");
        let mut left = i64::from(input.u16()?) - 2;
        while left > 0 {
            let pq_tq = input.byte()?;
            let sixteen_bit = pq_tq >> 4 != 0;
            let slot = usize::from(pq_tq & 0x0F);
            if slot >= 4 {
                return Err(bad());
            }
            let mut table = [0u16; 64];
            for &pos in &tables::NATURAL_ORDER[..64] {
                table[pos] = if sixteen_bit {
                    input.u16()?
                } else {
                    u16::from(input.byte()?)
                };
            }
            self.quant_specs[slot] = Some(table);
            left -= if sixteen_bit { 129 } else { 65 };
        }
        if left != 0 {
            return Err(bad());
        }
        Ok(())
    }
}

fn read_frame(input: &mut Input, progressive: bool) -> Result<Frame> {
    let len = usize::from(input.u16()?);
    let precision = input.byte()?;
    let height = u32::from(input.u16()?);
    let width = u32::from(input.u16()?);
    let n = usize::from(input.byte()?);
    if precision != 8 {
        return Err(unsupported(format!(
            "{precision}-bit JPEGs are not supported (only 8-bit)"
        )));
    }
    if height == 0 || width == 0 || n == 0 {
        // Height 0 would be defined later by a DNL marker, which libjpeg does not support.
        return Err(corrupt(format!(
            "the JPEG frame is {width}×{height} with {n} components"
        )));
    }
    if len != 8 + 3 * n {
        return Err(corrupt("the JPEG frame header has a bad length"));
    }
    if !matches!(n, 1 | 3 | 4) {
        return Err(unsupported(format!(
            "JPEGs with {n} components are not supported"
        )));
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(JpegError {
            kind: ImageErrorKind::TooLarge,
            reason: format!("{width}×{height} pixels is over libjpeg's limit of {MAX_DIMENSION}"),
        });
    }
    let mut components = Vec::with_capacity(n);
    for _ in 0..n {
        let id = input.byte()?;
        let hv = input.byte()?;
        let tq = usize::from(input.byte()?);
        let (h, v) = (usize::from(hv >> 4), usize::from(hv & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(corrupt(format!(
                "a JPEG component has sampling factors {h}x{v}"
            )));
        }
        components.push(Component {
            id,
            h,
            v,
            tq,
            width_in_blocks: 0,
            height_in_blocks: 0,
            padded_width: 0,
            padded_height: 0,
            width: 0,
            height: 0,
            quant: None,
            dc_table: 0,
            ac_table: 0,
        });
    }
    let (width, height) = (width as usize, height as usize);
    let max_h = components.iter().map(|c| c.h).max().unwrap_or(1);
    let max_v = components.iter().map(|c| c.v).max().unwrap_or(1);
    let mcus_x = width.div_ceil(8 * max_h);
    let imcu_rows = height.div_ceil(8 * max_v);
    for c in &mut components {
        c.width_in_blocks = (width * c.h).div_ceil(8 * max_h);
        c.height_in_blocks = (height * c.v).div_ceil(8 * max_v);
        c.padded_width = mcus_x * c.h;
        c.padded_height = imcu_rows * c.v;
        c.width = (width * c.h).div_ceil(max_h);
        c.height = (height * c.v).div_ceil(max_v);
    }
    Ok(Frame {
        width,
        height,
        progressive,
        components,
        max_h,
        max_v,
        mcus_x,
        imcu_rows,
    })
}

/// A start-of-scan header (libjpeg's `get_sos`, with its quirks in matching component
/// ids), setting the components' table slots.
fn read_scan(input: &mut Input, frame: &mut Frame) -> Result<Scan> {
    let len = usize::from(input.u16()?);
    let n = usize::from(input.byte()?);
    if len != 6 + 2 * n || !(1..=4).contains(&n) {
        return Err(corrupt("a JPEG scan header has a bad length"));
    }
    let mut components: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        let id = input.byte()?;
        let tables = input.byte()?;
        // libjpeg skips a candidate whose index is a scan slot already filled.
        let found = frame
            .components
            .iter()
            .take(4)
            .enumerate()
            .position(|(ci, c)| c.id == id && ci >= i)
            .filter(|ci| !components.contains(ci))
            .ok_or_else(|| corrupt(format!("a JPEG scan names an unknown component {id}")))?;
        let c = &mut frame.components[found];
        c.dc_table = usize::from(tables >> 4);
        c.ac_table = usize::from(tables & 15);
        components.push(found);
    }
    let ss = input.byte()?;
    let se = input.byte()?;
    let a = input.byte()?;
    Ok(Scan {
        components,
        ss,
        se,
        ah: a >> 4,
        al: a & 15,
    })
}

/// Where a decoded scan's blocks go: component planes of blocks, each starting at block
/// row `first_row` (the whole padded grid, or one MCU row of it).
struct BlockStore {
    blocks: Vec<Vec<Block>>,
    stride: Vec<usize>,
    first_row: Vec<usize>,
}

/// Progression state: for each component and zigzag coefficient, how many low bits are
/// still unknown (-1: none received), now and before the latest scan that touched it
/// (libjpeg's `coef_bits`, used to decide block smoothing).
struct Progression {
    bits: Vec<[i32; 64]>,
    prev_bits: Vec<[i32; 64]>,
}

impl<'a> Header<'a> {
    pub(crate) fn width(&self) -> u32 {
        self.frame.width as u32
    }

    pub(crate) fn height(&self) -> u32 {
        self.frame.height as u32
    }

    pub(crate) fn color_space(&self) -> ColorSpace {
        self.color
    }

    /// The first Exif segment's TIFF data (after "Exif\0\0"), if any.
    pub(crate) fn exif(&self) -> Option<&'a [u8]> {
        self.exif
    }

    /// True for files decoded into a whole-image coefficient buffer first (progressive
    /// and multi-scan sequential JPEGs).
    fn buffered(&self) -> bool {
        self.frame.progressive || self.first_scan.components.len() < self.frame.components.len()
    }

    /// Bytes of the buffers image-sized in both dimensions that decoding allocates: the
    /// RGB output, plus 2 bytes per coefficient for buffered files.
    pub(crate) fn decoded_bytes(&self) -> u64 {
        let out = self.frame.width as u64 * self.frame.height as u64 * 3;
        if !self.buffered() {
            return out;
        }
        let coefs: u64 = self
            .frame
            .components
            .iter()
            .map(|c| (c.padded_width * c.padded_height) as u64 * 128)
            .sum();
        out + coefs
    }

    /// Decodes the image to RGB (`width × height × 3` bytes).
    pub(crate) fn decode(mut self) -> Result<Vec<u8>> {
        let mut output = Output::new(&self.frame, self.color)?;
        if self.buffered() {
            self.decode_buffered(&mut output)?;
        } else {
            self.decode_single_scan(&mut output)?;
        }
        Ok(output.rgb)
    }

    /// A single-scan sequential file (libjpeg's `decompress_onepass`): MCU row by MCU row
    /// to pixels. Markers after the scan are read up to the end-of-image marker; another
    /// scan there is an error in libjpeg (`JERR_EOI_EXPECTED`), so it is here.
    fn decode_single_scan(&mut self, output: &mut Output) -> Result<()> {
        let scan = std::mem::replace(&mut self.first_scan, empty_scan());
        let plan = self.plan_scan(&scan, None)?;
        let frame = &self.frame;
        let mut store = BlockStore {
            blocks: frame
                .components
                .iter()
                .map(|c| vec![[0i16; 64]; c.padded_width * c.v])
                .collect(),
            stride: frame.components.iter().map(|c| c.padded_width).collect(),
            first_row: vec![0; frame.components.len()],
        };
        let mut state = ScanState::new(self.restart_interval);
        self.input.reset_bits();
        let quant = self.idct_tables();
        // With one component the scan is not interleaved: its MCU is one block, and an
        // iMCU row holds v block rows.
        let rows_per_imcu = if plan.components.len() == 1 {
            frame.components[plan.components[0]].v
        } else {
            1
        };
        for mcu_row in 0..plan.mcus_y {
            let imcu = mcu_row / rows_per_imcu;
            if mcu_row % rows_per_imcu == 0 {
                for (ci, c) in frame.components.iter().enumerate() {
                    store.blocks[ci].fill([0; 64]);
                    store.first_row[ci] = imcu * c.v;
                }
            }
            decode_mcu_rows(
                &mut self.input,
                &plan,
                frame,
                &mut state,
                &mut store,
                mcu_row..mcu_row + 1,
                &mut 0,
            )?;
            let row_done = (mcu_row + 1) % rows_per_imcu == 0 || mcu_row + 1 == plan.mcus_y;
            if row_done {
                for (ci, c) in frame.components.iter().enumerate() {
                    let rows = (c.height_in_blocks - imcu * c.v).min(c.v);
                    for by in 0..rows {
                        for bx in 0..c.width_in_blocks {
                            let block = &store.blocks[ci][by * c.padded_width + bx];
                            output.idct_block(ci, imcu * c.v + by, bx, block, &quant[ci]);
                        }
                    }
                }
                if imcu > 0 {
                    output.emit(imcu - 1);
                }
            }
        }
        output.emit(frame.imcu_rows - 1);
        let mut markers = self.markers_after_first_scan();
        match markers.read(&mut self.input, Some(&mut self.frame), false)? {
            Next::EndOfImage => Ok(()),
            Next::Scan(_) => Err(corrupt(
                "the JPEG has a scan after its single full scan (libjpeg expects the end here)",
            )),
        }
    }

    /// Progressive and multi-scan files: every scan into the coefficient buffer, then the
    /// transform (with block smoothing where libjpeg smooths).
    fn decode_buffered(&mut self, output: &mut Output) -> Result<()> {
        let n = self.frame.components.len();
        let mut store = BlockStore {
            blocks: self
                .frame
                .components
                .iter()
                .map(|c| vec![[0i16; 64]; c.padded_width * c.padded_height])
                .collect(),
            stride: self
                .frame
                .components
                .iter()
                .map(|c| c.padded_width)
                .collect(),
            first_row: vec![0; n],
        };
        let mut progression = Progression {
            bits: vec![[-1; 64]; n],
            prev_bits: vec![[0; 64]; n],
        };
        let mut last_good_imcu = 0usize;
        let mut scan = std::mem::replace(&mut self.first_scan, empty_scan());
        loop {
            let plan = self.plan_scan(&scan, Some(&mut progression))?;
            let mut state = ScanState::new(self.restart_interval);
            self.input.reset_bits();
            decode_mcu_rows(
                &mut self.input,
                &plan,
                &self.frame,
                &mut state,
                &mut store,
                0..plan.mcus_y,
                &mut last_good_imcu,
            )?;
            let mut markers = self.markers_after_first_scan();
            let next = markers.read(&mut self.input, Some(&mut self.frame), false)?;
            self.take_tables(markers);
            match next {
                Next::Scan(s) => scan = s,
                Next::EndOfImage => break,
            }
        }
        let quant = self.idct_tables();
        let latch = if self.frame.progressive {
            let q: Vec<_> = self.frame.components.iter().map(|c| c.quant).collect();
            smooth::smoothing_latch(
                &progression.bits,
                &progression.prev_bits,
                &q,
                self.scans_read,
            )
        } else {
            None
        };
        let frame = &self.frame;
        for imcu in 0..frame.imcu_rows {
            for (ci, c) in frame.components.iter().enumerate() {
                let blocks = &store.blocks[ci];
                if let (Some(latch), Some(q)) = (&latch, &c.quant) {
                    let plane = smooth::SmoothPlane {
                        blocks,
                        stride: c.padded_width,
                        width_in_blocks: c.width_in_blocks,
                        height_in_blocks: c.height_in_blocks,
                        v_samp: c.v,
                        total_imcu_rows: frame.imcu_rows,
                        quant: q,
                    };
                    let bits = if imcu > last_good_imcu {
                        &latch[ci].1
                    } else {
                        &latch[ci].0
                    };
                    smooth::smooth_imcu_row(&plane, imcu, bits, |by, bx, block| {
                        output.idct_block(ci, by, bx, block, &quant[ci]);
                    });
                } else {
                    let rows = c.height_in_blocks.saturating_sub(imcu * c.v).min(c.v);
                    for by in imcu * c.v..imcu * c.v + rows {
                        for bx in 0..c.width_in_blocks {
                            let block = &blocks[by * c.padded_width + bx];
                            output.idct_block(ci, by, bx, block, &quant[ci]);
                        }
                    }
                }
            }
            if imcu > 0 {
                output.emit(imcu - 1);
            }
        }
        output.emit(frame.imcu_rows - 1);
        Ok(())
    }

    /// The marker state for segments after a scan: the tables defined so far.
    fn markers_after_first_scan(&mut self) -> Markers<'a> {
        Markers {
            frame: None,
            dc_specs: std::mem::take(&mut self.dc_specs),
            ac_specs: std::mem::take(&mut self.ac_specs),
            quant_specs: self.quant_specs,
            restart_interval: self.restart_interval,
            jfif: false,
            adobe_transform: None,
            exif: None,
            scans_read: self.scans_read,
        }
    }

    fn take_tables(&mut self, markers: Markers<'a>) {
        self.dc_specs = markers.dc_specs;
        self.ac_specs = markers.ac_specs;
        self.quant_specs = markers.quant_specs;
        self.restart_interval = markers.restart_interval;
        self.scans_read = markers.scans_read;
    }

    /// Per component, the quantisation table as the IDCT multiplies by it (libjpeg's
    /// `ISLOW_MULT_TYPE` is 16-bit); zeros for a component no scan ever named.
    fn idct_tables(&self) -> Vec<[i16; 64]> {
        self.frame
            .components
            .iter()
            .map(|c| c.quant.map_or([0; 64], |q| q.map(|v| v as i16)))
            .collect()
    }

    /// Validates a scan and prepares its decoding (libjpeg's `start_input_pass`:
    /// quantisation tables latched, MCU layout, entropy decoder set up).
    fn plan_scan(
        &mut self,
        scan: &Scan,
        progression: Option<&mut Progression>,
    ) -> Result<ScanPlan> {
        let frame = &mut self.frame;
        for &ci in &scan.components {
            let c = &mut frame.components[ci];
            if c.quant.is_none() {
                let table = self
                    .quant_specs
                    .get(c.tq)
                    .copied()
                    .flatten()
                    .ok_or_else(|| corrupt(format!("quantisation table {} is missing", c.tq)))?;
                c.quant = Some(table);
            }
        }
        let kind = if !frame.progressive {
            ScanKind::Sequential
        } else {
            match (scan.ss == 0, scan.ah == 0) {
                (true, true) => ScanKind::DcFirst,
                (true, false) => ScanKind::DcRefine,
                (false, true) => ScanKind::AcFirst,
                (false, false) => ScanKind::AcRefine,
            }
        };
        if let Some(p) = progression.filter(|_| frame.progressive) {
            update_progression(scan, p, self.scans_read)?;
        }
        let (mcus_x, mcus_y, blocks) = if scan.components.len() == 1 {
            let c = &frame.components[scan.components[0]];
            (c.width_in_blocks, c.height_in_blocks, vec![(0, 0, 0)])
        } else {
            let mut blocks = Vec::new();
            for (slot, &ci) in scan.components.iter().enumerate() {
                let c = &frame.components[ci];
                for y in 0..c.v {
                    for x in 0..c.h {
                        blocks.push((slot, x, y));
                    }
                }
            }
            if blocks.len() > MAX_BLOCKS_IN_MCU {
                return Err(corrupt("a JPEG scan has more than 10 blocks per MCU"));
            }
            (frame.mcus_x, frame.imcu_rows, blocks)
        };
        let table = |specs: &[Option<HuffSpec>; 4], slot: usize, is_dc: bool| {
            let spec = specs
                .get(slot)
                .and_then(Option::as_ref)
                .ok_or_else(|| corrupt(format!("Huffman table {slot} is missing")))?;
            HuffTable::new(spec, is_dc).map(Some)
        };
        let mut dc = Vec::new();
        let mut ac = Vec::new();
        for &ci in &scan.components {
            let c = &frame.components[ci];
            let (need_dc, need_ac) = match kind {
                ScanKind::Sequential => (true, true),
                ScanKind::DcFirst => (true, false),
                ScanKind::DcRefine => (false, false),
                ScanKind::AcFirst | ScanKind::AcRefine => (false, true),
            };
            dc.push(if need_dc {
                table(&self.dc_specs, c.dc_table, true)?
            } else {
                None
            });
            ac.push(if need_ac {
                table(&self.ac_specs, c.ac_table, false)?
            } else {
                None
            });
        }
        Ok(ScanPlan {
            kind,
            components: scan.components.clone(),
            band: (scan.ss, scan.se, scan.al),
            mcus_x,
            mcus_y,
            blocks,
            dc,
            ac,
        })
    }
}

fn empty_scan() -> Scan {
    Scan {
        components: Vec::new(),
        ss: 0,
        se: 0,
        ah: 0,
        al: 0,
    }
}

/// libjpeg's `start_pass_phuff_decoder` checks and progression bookkeeping. Bad
/// parameters are errors; an inconsistent order of scans only a warning.
fn update_progression(scan: &Scan, p: &mut Progression, scans_read: u32) -> Result<()> {
    let (ss, se, ah, al) = (scan.ss, scan.se, scan.ah, scan.al);
    let bad = if ss == 0 {
        se != 0
    } else {
        ss > se || se >= 64 || scan.components.len() != 1
    } || (ah != 0 && al != ah.wrapping_sub(1))
        || al > 13;
    if bad {
        return Err(corrupt(format!(
            "a progressive JPEG scan has invalid parameters Ss={ss} Se={se} Ah={ah} Al={al}"
        )));
    }
    let (ss, se) = (usize::from(ss), usize::from(se));
    for &ci in &scan.components {
        let (bits, prev) = (&mut p.bits[ci], &mut p.prev_bits[ci]);
        for k in ss.min(1)..=se.max(9) {
            prev[k] = if scans_read > 1 { bits[k] } else { 0 };
        }
        for b in &mut bits[ss..=se] {
            *b = i32::from(al);
        }
    }
    Ok(())
}

/// Entropy decoding state across a scan's MCUs.
struct ScanState {
    entropy: EntropyState,
    restart_interval: usize,
    restarts_to_go: usize,
    next_restart: u8,
}

impl ScanState {
    fn new(restart_interval: usize) -> Self {
        ScanState {
            entropy: EntropyState::new(),
            restart_interval,
            restarts_to_go: restart_interval,
            next_restart: 0,
        }
    }
}

/// Decodes MCU rows `rows` of a scan into `store` (libjpeg's `decode_mcu` loop with
/// restart processing and its handling of data that runs out). `last_good_imcu` is
/// libjpeg's `last_good_iMCU_row`: the last iMCU row whose decoding started with data.
fn decode_mcu_rows(
    input: &mut Input,
    plan: &ScanPlan,
    frame: &Frame,
    state: &mut ScanState,
    store: &mut BlockStore,
    rows: std::ops::Range<usize>,
    last_good_imcu: &mut usize,
) -> Result<()> {
    let interleaved = plan.components.len() > 1;
    let v_of_scan = frame.components[plan.components[0]].v;
    let mut block_pos = Vec::with_capacity(plan.blocks.len());
    for my in rows {
        let imcu = if interleaved { my } else { my / v_of_scan };
        for mx in 0..plan.mcus_x {
            if !state.entropy.insufficient {
                *last_good_imcu = imcu;
            }
            if state.restart_interval != 0 {
                if state.restarts_to_go == 0 {
                    input.reset_bits();
                    input.read_restart_marker(&mut state.next_restart)?;
                    state.entropy.dc_pred = [0; 4];
                    state.entropy.eobrun = 0;
                    state.restarts_to_go = state.restart_interval;
                    if input.unread_marker.is_none() {
                        state.entropy.insufficient = false;
                    }
                }
                state.restarts_to_go -= 1;
            }
            // DC refinement scans read on regardless (zeros change nothing).
            if state.entropy.insufficient && plan.kind != ScanKind::DcRefine {
                continue;
            }
            block_pos.clear();
            for &(slot, dx, dy) in &plan.blocks {
                let ci = plan.components[slot];
                let c = &frame.components[ci];
                let (bx, by) = if interleaved {
                    (mx * c.h + dx, my * c.v + dy)
                } else {
                    (mx, my)
                };
                let index = (by - store.first_row[ci]) * store.stride[ci] + bx;
                block_pos.push((slot, ci, index));
            }
            for &(slot, ci, index) in &block_pos {
                let block = &mut store.blocks[ci][index];
                let e = &mut state.entropy;
                match plan.kind {
                    ScanKind::Sequential => {
                        let (Some(dc), Some(ac)) = (&plan.dc[slot], &plan.ac[slot]) else {
                            continue;
                        };
                        huffman::decode_block_sequential(
                            input,
                            dc,
                            ac,
                            &mut e.dc_pred[slot],
                            block,
                        );
                    }
                    ScanKind::DcFirst => {
                        let Some(dc) = &plan.dc[slot] else { continue };
                        huffman::decode_dc_first(
                            input,
                            dc,
                            &mut e.dc_pred[slot],
                            plan.band.2,
                            block,
                        )?;
                    }
                    ScanKind::DcRefine => huffman::decode_dc_refine(input, plan.band.2, block),
                    ScanKind::AcFirst => {
                        let Some(ac) = &plan.ac[slot] else { continue };
                        huffman::decode_ac_first(input, ac, &mut e.eobrun, plan.band, block);
                    }
                    ScanKind::AcRefine => {
                        let Some(ac) = &plan.ac[slot] else { continue };
                        huffman::decode_ac_refine(input, ac, &mut e.eobrun, plan.band, block);
                    }
                }
            }
            if input.overran() {
                state.entropy.insufficient = true;
            }
        }
        // PIL stops at the end of the data ("image file is truncated"); so do we, rather
        // than decode the rest of an image that will be refused.
        if input.exhausted {
            return Err(truncated());
        }
    }
    Ok(())
}

/// Component samples for three iMCU rows (the one being emitted and its neighbours),
/// reused round-robin.
struct Plane {
    data: Vec<u8>,
    stride: usize,
    ring_rows: usize,
}

impl Rows for Plane {
    fn row(&self, y: usize) -> &[u8] {
        let start = (y % self.ring_rows) * self.stride;
        &self.data[start..start + self.stride]
    }
}

/// Turns transformed blocks into RGB rows.
struct Output {
    width: usize,
    height: usize,
    max_v: usize,
    color: ColorSpace,
    planes: Vec<Plane>,
    methods: Vec<Upsample>,
    sizes: Vec<(usize, usize)>,
    /// One upsampled row per component.
    scratch: Vec<Vec<u8>>,
    tables: YccTables,
    rgb: Vec<u8>,
}

impl Output {
    fn new(frame: &Frame, color: ColorSpace) -> Result<Output> {
        let mut methods = Vec::new();
        for c in &frame.components {
            methods.push(Upsample::choose(
                (c.h, c.v),
                (frame.max_h, frame.max_v),
                c.width,
            )?);
        }
        let planes = frame
            .components
            .iter()
            .map(|c| {
                let stride = c.width_in_blocks * 8;
                let ring_rows = 3 * 8 * c.v;
                Plane {
                    data: vec![0; stride * ring_rows],
                    stride,
                    ring_rows,
                }
            })
            .collect();
        Ok(Output {
            width: frame.width,
            height: frame.height,
            max_v: frame.max_v,
            color,
            planes,
            methods,
            sizes: frame
                .components
                .iter()
                .map(|c| (c.width, c.height))
                .collect(),
            scratch: frame
                .components
                .iter()
                .map(|c| vec![0; (c.width * frame.max_h / c.h).max(frame.width) + 8])
                .collect(),
            tables: YccTables::new(),
            rgb: vec![0; frame.width * frame.height * 3],
        })
    }

    /// Transforms block (`by`, `bx`) of component `ci` into its plane.
    fn idct_block(&mut self, ci: usize, by: usize, bx: usize, block: &Block, quant: &[i16; 64]) {
        let plane = &mut self.planes[ci];
        let start = ((by * 8) % plane.ring_rows) * plane.stride + bx * 8;
        idct::idct_islow(block, quant, &mut plane.data[start..], plane.stride);
    }

    /// Writes the output rows of iMCU row `imcu` (the planes hold it and its neighbours).
    fn emit(&mut self, imcu: usize) {
        let rows_per_imcu = 8 * self.max_v;
        let first = imcu * rows_per_imcu;
        let end = (first + rows_per_imcu).min(self.height);
        for y in first..end {
            for (ci, plane) in self.planes.iter().enumerate() {
                let (w, h) = self.sizes[ci];
                let method = self.methods[ci];
                if method != Upsample::Full {
                    color::upsample_row(method, plane, (w, h), y, &mut self.scratch[ci]);
                }
            }
            let mut rows: [&[u8]; 4] = [&[]; 4];
            for (ci, row) in rows.iter_mut().enumerate().take(self.planes.len()) {
                *row = if self.methods[ci] == Upsample::Full {
                    &self.planes[ci].row(y)[..self.width]
                } else {
                    &self.scratch[ci][..self.width]
                };
            }
            let out = &mut self.rgb[y * self.width * 3..(y + 1) * self.width * 3];
            color::convert_row(self.color, &self.tables, &rows[..self.planes.len()], out);
        }
    }
}
