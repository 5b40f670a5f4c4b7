//! SentencePiece tokenizers: `tokenizer.model` files, and the rules of transformers' slow
//! `LlamaTokenizer` on top of them.
//!
//! Part one reads sentencepiece's `ModelProto` with a small hand-written protobuf reader
//! (the file is untrusted input: every length is bounds-checked and every problem is an
//! [`SpmError`], never a panic) and reproduces the library's BPE encoder and decoder
//! (`bpe_model.cc`, `normalizer.cc`, `sentencepiece_processor.cc` of sentencepiece 0.2):
//! identity normalisation, "▁" for spaces and a dummy prefix, user-defined pieces kept whole,
//! merges of the highest-scoring adjacent pair (leftmost on ties), byte fallback, and the
//! decoder's handling of byte pieces and of the leading space. [`SpmModel`] can also be built
//! from plain parts ([`SpmModel::from_parts`]), as a GGUF vocabulary stores them.
//!
//! Part two, [`LlamaSlowTokenizer`], is transformers 4's sentencepiece-backed
//! `LlamaTokenizer` (v4.40; v4.41–v4.57 do the same): added and special tokens split the
//! text first (transformers' own `Trie`), each chunk is encoded by SentencePiece, and the
//! `legacy`, `add_prefix_space`, `add_bos_token` and `add_eos_token` settings apply exactly
//! as there. MobileVLM's reference code uses this slow tokenizer; its fast counterpart
//! differs on text around special tokens. tests/reference/fixtures_spm.py has a Python
//! re-implementation that was checked against transformers 4.40.2 and 4.57.1.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};

/// What is wrong with a SentencePiece model.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpmError {
    /// The protobuf ends in the middle of a field.
    #[error("truncated protobuf: {what} at byte {offset} runs past the end")]
    Truncated { offset: usize, what: &'static str },
    /// The bytes are not a `ModelProto` (bad wire type, overlong varint, invalid UTF-8, ...).
    #[error("malformed protobuf at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
    /// A well-formed model that sentencepiece itself would refuse to load.
    #[error("invalid SentencePiece model: {0}")]
    Invalid(String),
    /// A valid model of a kind this engine does not implement.
    #[error("unsupported SentencePiece model: {0}")]
    Unsupported(String),
}

type SpmResult<T> = std::result::Result<T, SpmError>;

// ---------------------------------------------------------------------------------------
// Protobuf

/// Kinds of pieces, numbered as in sentencepiece_model.proto (and GGUF's `token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }

    pub fn code(self) -> i32 {
        match self {
            PieceType::Normal => 1,
            PieceType::Unknown => 2,
            PieceType::Control => 3,
            PieceType::UserDefined => 4,
            PieceType::Unused => 5,
            PieceType::Byte => 6,
        }
    }

    /// sentencepiece keeps these in the map that merges look pieces up in; the others
    /// (unknown, control, byte) never come out of a merge.
    fn mergeable(self) -> bool {
        matches!(
            self,
            PieceType::Normal | PieceType::UserDefined | PieceType::Unused
        )
    }
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmPiece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

impl SpmPiece {
    pub fn new(piece: impl Into<String>, score: f32, kind: PieceType) -> Self {
        SpmPiece {
            piece: piece.into(),
            score,
            kind,
        }
    }
}

/// `TrainerSpec.model_type`.
pub const MODEL_TYPE_UNIGRAM: i32 = 1;
pub const MODEL_TYPE_BPE: i32 = 2;
pub const MODEL_TYPE_WORD: i32 = 3;
pub const MODEL_TYPE_CHAR: i32 = 4;

/// The fields of `TrainerSpec` that matter for encoding and decoding (defaults as in the
/// .proto file).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerSpec {
    pub model_type: i32,
    pub vocab_size: i32,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
    /// What the decoder writes for `<unk>`; `None` means the default " ⁇ ".
    pub unk_surface: Option<String>,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: MODEL_TYPE_UNIGRAM,
            vocab_size: 8000,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
            unk_surface: None,
        }
    }
}

/// `NormalizerSpec` (defaults as in the .proto file).
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizerSpec {
    pub name: String,
    /// Length of the compiled normalisation rules; 0 is the identity normaliser.
    pub precompiled_charsmap_len: usize,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap_len: 0,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// A parsed `tokenizer.model`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelProto {
    pub pieces: Vec<SpmPiece>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
    pub denormalizer_spec: Option<NormalizerSpec>,
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over one protobuf message; `base` is the message's offset in the file, so that
/// errors point at file offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn malformed(&self, reason: impl Into<String>) -> SpmError {
        SpmError::Malformed {
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    fn varint(&mut self) -> SpmResult<u64> {
        let start = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(SpmError::Truncated {
                    offset: start,
                    what: "varint",
                });
            };
            self.pos += 1;
            // The tenth byte may only hold the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(SpmError::Malformed {
                    offset: start,
                    reason: "varint overflows 64 bits".into(),
                });
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SpmError::Malformed {
            offset: start,
            reason: "varint longer than 10 bytes".into(),
        })
    }

    /// (field number, wire type) of the next field.
    fn key(&mut self) -> SpmResult<(u64, u8)> {
        let start = self.offset();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(SpmError::Malformed {
                offset: start,
                reason: "field number 0".into(),
            });
        }
        Ok((field, (key & 7) as u8))
    }

    fn take(&mut self, n: usize, what: &'static str) -> SpmResult<&'a [u8]> {
        let start = self.offset();
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(SpmError::Truncated {
                offset: start,
                what,
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A length-delimited field's bytes and their offset in the file.
    fn bytes(&mut self) -> SpmResult<(&'a [u8], usize)> {
        let start = self.offset();
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| SpmError::Truncated {
            offset: start,
            what: "length-delimited field",
        })?;
        let at = self.offset();
        Ok((self.take(len, "length-delimited field")?, at))
    }

    fn fixed32(&mut self) -> SpmResult<u32> {
        let b = self.take(4, "fixed32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips a field this reader does not need.
    fn skip(&mut self, wire: u8) -> SpmResult<()> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8, "fixed64").map(drop),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_FIXED32 => self.take(4, "fixed32").map(drop),
            other => Err(self.malformed(format!("unsupported wire type {other}"))),
        }
    }

    fn expect(&self, field: u64, wire: u8, want: u8, at: usize) -> SpmResult<()> {
        if wire == want {
            Ok(())
        } else {
            Err(SpmError::Malformed {
                offset: at,
                reason: format!("field {field} has wire type {wire}, expected {want}"),
            })
        }
    }

    fn string(&mut self, what: &str) -> SpmResult<String> {
        let (bytes, at) = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| SpmError::Malformed {
            offset: at,
            reason: format!("{what} is not valid UTF-8"),
        })
    }
}

/// Calls `f(reader, field, wire, field_offset)` for each field of a message.
fn for_each_field<'a>(
    buf: &'a [u8],
    base: usize,
    mut f: impl FnMut(&mut Reader<'a>, u64, u8, usize) -> SpmResult<()>,
) -> SpmResult<()> {
    let mut r = Reader::new(buf, base);
    while !r.done() {
        let at = r.offset();
        let (field, wire) = r.key()?;
        f(&mut r, field, wire, at)?;
    }
    Ok(())
}

fn parse_piece(buf: &[u8], base: usize, index: usize) -> SpmResult<SpmPiece> {
    let mut piece = SpmPiece::new(String::new(), 0.0, PieceType::Normal);
    for_each_field(buf, base, |r, field, wire, at| {
        match field {
            1 => {
                r.expect(field, wire, WIRE_LEN, at)?;
                piece.piece = r.string(&format!("piece {index}"))?;
            }
            2 => {
                r.expect(field, wire, WIRE_FIXED32, at)?;
                piece.score = f32::from_bits(r.fixed32()?);
            }
            3 => {
                r.expect(field, wire, WIRE_VARINT, at)?;
                let code = r.varint()? as i64;
                piece.kind = PieceType::from_code(code).ok_or_else(|| SpmError::Malformed {
                    offset: at,
                    reason: format!("piece {index} has unknown type {code}"),
                })?;
            }
            _ => r.skip(wire)?,
        }
        Ok(())
    })?;
    Ok(piece)
}

/// Merges the fields of one `TrainerSpec` occurrence into `spec` (protobuf semantics: a
/// repeated occurrence of a message field is merged, the last scalar wins).
fn parse_trainer_spec(buf: &[u8], base: usize, spec: &mut TrainerSpec) -> SpmResult<()> {
    for_each_field(buf, base, |r, field, wire, at| {
        // int32 fields are sign-extended 64-bit varints; truncation restores them.
        let int = |r: &mut Reader, slot: &mut i32| -> SpmResult<()> {
            r.expect(field, wire, WIRE_VARINT, at)?;
            *slot = r.varint()? as i32;
            Ok(())
        };
        match field {
            3 => int(r, &mut spec.model_type)?,
            4 => int(r, &mut spec.vocab_size)?,
            40 => int(r, &mut spec.unk_id)?,
            41 => int(r, &mut spec.bos_id)?,
            42 => int(r, &mut spec.eos_id)?,
            43 => int(r, &mut spec.pad_id)?,
            24 | 35 => {
                r.expect(field, wire, WIRE_VARINT, at)?;
                let v = r.varint()? != 0;
                if field == 24 {
                    spec.treat_whitespace_as_suffix = v;
                } else {
                    spec.byte_fallback = v;
                }
            }
            44..=48 => {
                r.expect(field, wire, WIRE_LEN, at)?;
                let s = r.string("trainer_spec string")?;
                match field {
                    44 => spec.unk_surface = Some(s),
                    45 => spec.unk_piece = s,
                    46 => spec.bos_piece = s,
                    47 => spec.eos_piece = s,
                    _ => spec.pad_piece = s,
                }
            }
            _ => r.skip(wire)?,
        }
        Ok(())
    })
}

fn parse_normalizer_spec(buf: &[u8], base: usize, spec: &mut NormalizerSpec) -> SpmResult<()> {
    for_each_field(buf, base, |r, field, wire, at| {
        match field {
            1 => {
                r.expect(field, wire, WIRE_LEN, at)?;
                let (b, _) = r.bytes()?;
                spec.name = String::from_utf8_lossy(b).into_owned();
            }
            2 => {
                r.expect(field, wire, WIRE_LEN, at)?;
                spec.precompiled_charsmap_len = r.bytes()?.0.len();
            }
            3..=5 => {
                r.expect(field, wire, WIRE_VARINT, at)?;
                let v = r.varint()? != 0;
                match field {
                    3 => spec.add_dummy_prefix = v,
                    4 => spec.remove_extra_whitespaces = v,
                    _ => spec.escape_whitespaces = v,
                }
            }
            _ => r.skip(wire)?,
        }
        Ok(())
    })
}

impl ModelProto {
    /// Parses the bytes of a `tokenizer.model`.
    pub fn parse(buf: &[u8]) -> SpmResult<ModelProto> {
        let mut m = ModelProto::default();
        for_each_field(buf, 0, |r, field, wire, at| {
            match field {
                1..=3 | 5 => {
                    r.expect(field, wire, WIRE_LEN, at)?;
                    let (b, base) = r.bytes()?;
                    match field {
                        1 => {
                            let index = m.pieces.len();
                            m.pieces.push(parse_piece(b, base, index)?);
                        }
                        2 => parse_trainer_spec(b, base, &mut m.trainer_spec)?,
                        3 => parse_normalizer_spec(b, base, &mut m.normalizer_spec)?,
                        _ => parse_normalizer_spec(
                            b,
                            base,
                            m.denormalizer_spec.get_or_insert_with(Default::default),
                        )?,
                    }
                }
                _ => r.skip(wire)?,
            }
            Ok(())
        })?;
        Ok(m)
    }
}

// ---------------------------------------------------------------------------------------
// The model

const SPACE_SYMBOL: &str = "\u{2581}";
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// Normalisation and decoding settings of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmOptions {
    /// Unknown characters become `<0xXX>` byte pieces (LLaMA) instead of `<unk>`.
    pub byte_fallback: bool,
    /// A "▁" in front of the text, so that the first word looks like every other word.
    pub add_dummy_prefix: bool,
    /// Leading, trailing and repeated spaces are removed (not for LLaMA).
    pub remove_extra_whitespaces: bool,
    /// Spaces become "▁".
    pub escape_whitespaces: bool,
    /// What `<unk>` decodes to.
    pub unk_surface: String,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
}

impl Default for SpmOptions {
    /// sentencepiece's defaults.
    fn default() -> Self {
        let t = TrainerSpec::default();
        let n = NormalizerSpec::default();
        SpmOptions {
            byte_fallback: t.byte_fallback,
            add_dummy_prefix: n.add_dummy_prefix,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            escape_whitespaces: n.escape_whitespaces,
            unk_surface: DEFAULT_UNK_SURFACE.into(),
            unk_piece: t.unk_piece,
            bos_piece: t.bos_piece,
            eos_piece: t.eos_piece,
            pad_piece: t.pad_piece,
        }
    }
}

impl SpmOptions {
    /// LLaMA's settings: byte fallback, dummy prefix, spaces kept as they are.
    pub fn llama() -> Self {
        SpmOptions {
            byte_fallback: true,
            remove_extra_whitespaces: false,
            ..Default::default()
        }
    }
}

/// A SentencePiece BPE model: encodes text into pieces and decodes pieces into text exactly
/// as the `sentencepiece` library does.
#[derive(Clone, Debug)]
pub struct SpmModel {
    pieces: Vec<SpmPiece>,
    /// Normal, user-defined and unused pieces (sentencepiece's `pieces_`).
    mergeable: HashMap<String, u32>,
    /// Unknown, control and byte pieces (`reserved_id_map_`).
    reserved: HashMap<String, u32>,
    user_defined: HashSet<String>,
    /// Longest user-defined piece, in bytes.
    user_defined_max: usize,
    unk_id: u32,
    byte_ids: Option<Box<[u32; 256]>>,
    options: SpmOptions,
}

/// `<0xXX>` (upper-case hex, as sentencepiece writes it).
fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// The byte of a `<0xXX>` piece.
fn piece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// One UTF-8 character at the start of `b` by sentencepiece's rules (`DecodeUTF8`): its
/// length when valid; `None` (consume one byte) when not.
fn decode_utf8_char(b: &[u8]) -> Option<usize> {
    let trail = |i: usize| b.get(i).is_some_and(|&c| c & 0xC0 == 0x80);
    let valid_cp = |cp: u32| cp < 0xD800 || (0xE000..=0x10FFFF).contains(&cp);
    let b0 = *b.first()?;
    if b0 < 0x80 {
        return Some(1);
    }
    if b.len() >= 2 && b0 & 0xE0 == 0xC0 {
        let cp = (u32::from(b0 & 0x1F) << 6) | u32::from(b[1] & 0x3F);
        if trail(1) && cp >= 0x80 && valid_cp(cp) {
            return Some(2);
        }
    } else if b.len() >= 3 && b0 & 0xF0 == 0xE0 {
        let cp =
            (u32::from(b0 & 0x0F) << 12) | (u32::from(b[1] & 0x3F) << 6) | u32::from(b[2] & 0x3F);
        if trail(1) && trail(2) && cp >= 0x800 && valid_cp(cp) {
            return Some(3);
        }
    } else if b.len() >= 4 && b0 & 0xF8 == 0xF0 {
        let cp = (u32::from(b0 & 0x07) << 18)
            | (u32::from(b[1] & 0x3F) << 12)
            | (u32::from(b[2] & 0x3F) << 6)
            | u32::from(b[3] & 0x3F);
        if trail(1) && trail(2) && trail(3) && cp >= 0x10000 && valid_cp(cp) {
            return Some(4);
        }
    }
    None
}

/// A candidate merge of the adjacent symbols `left` and `right`.
struct Merge {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Merge {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Merge {}
impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Merge {
    /// The heap pops the highest score first, then the leftmost. Scores compare like C++'s
    /// `<` (so -0.0 equals 0.0; a NaN ties with everything and cannot panic).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let by_score = if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        by_score.then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the normalised text: `normalized[start..start + len]`; empty once merged into
/// its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    frozen: bool,
}

impl SpmModel {
    /// Reads a `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<SpmModel> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        SpmModel::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Parses and checks a serialized `ModelProto`.
    pub fn from_bytes(bytes: &[u8]) -> SpmResult<SpmModel> {
        SpmModel::from_proto(ModelProto::parse(bytes)?)
    }

    pub fn from_proto(proto: ModelProto) -> SpmResult<SpmModel> {
        if proto.pieces.is_empty() {
            return Err(SpmError::Invalid("the model has no pieces".into()));
        }
        let t = &proto.trainer_spec;
        match t.model_type {
            MODEL_TYPE_BPE => {}
            MODEL_TYPE_UNIGRAM => {
                return Err(SpmError::Unsupported(
                    "unigram models are not implemented (only BPE, as LLaMA uses)".into(),
                ));
            }
            MODEL_TYPE_WORD | MODEL_TYPE_CHAR => {
                return Err(SpmError::Unsupported(format!(
                    "{} models are not implemented (only BPE)",
                    if t.model_type == MODEL_TYPE_WORD {
                        "word"
                    } else {
                        "char"
                    }
                )));
            }
            other => return Err(SpmError::Invalid(format!("unknown model type {other}"))),
        }
        if t.treat_whitespace_as_suffix {
            return Err(SpmError::Unsupported(
                "treat_whitespace_as_suffix is not implemented".into(),
            ));
        }
        let n = &proto.normalizer_spec;
        // Without compiled rules sentencepiece's normaliser is the identity, whatever the
        // rule's name; with them (nmt_nfkc and friends) it rewrites text through a trie of
        // Unicode mappings that this engine does not carry.
        if n.precompiled_charsmap_len > 0 {
            return Err(SpmError::Unsupported(format!(
                "normalization rule `{}` (only identity normalisation is implemented)",
                n.name
            )));
        }
        if let Some(d) = &proto.denormalizer_spec
            && d.precompiled_charsmap_len > 0
        {
            return Err(SpmError::Unsupported(format!(
                "denormalization rule `{}` is not implemented",
                d.name
            )));
        }
        let options = SpmOptions {
            byte_fallback: t.byte_fallback,
            add_dummy_prefix: n.add_dummy_prefix,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            escape_whitespaces: n.escape_whitespaces,
            unk_surface: t
                .unk_surface
                .clone()
                .unwrap_or_else(|| DEFAULT_UNK_SURFACE.into()),
            unk_piece: t.unk_piece.clone(),
            bos_piece: t.bos_piece.clone(),
            eos_piece: t.eos_piece.clone(),
            pad_piece: t.pad_piece.clone(),
        };
        SpmModel::from_parts(proto.pieces, options)
    }

    /// A model from its vocabulary (in id order) and settings, with the checks sentencepiece
    /// makes when it loads a model (`InitializePieces`).
    pub fn from_parts(pieces: Vec<SpmPiece>, options: SpmOptions) -> SpmResult<SpmModel> {
        if u32::try_from(pieces.len()).is_err() {
            return Err(SpmError::Invalid("too many pieces".into()));
        }
        let mut mergeable = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined = HashSet::new();
        let mut unk_id = None;
        let mut byte_ids: Option<Box<[u32; 256]>> = None;
        let mut bytes_found = [false; 256];
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            if p.piece.is_empty() {
                return Err(SpmError::Invalid(format!("piece {i} is empty")));
            }
            let map = if p.kind.mergeable() {
                &mut mergeable
            } else {
                &mut reserved
            };
            if map.insert(p.piece.clone(), id).is_some() {
                return Err(SpmError::Invalid(format!(
                    "piece {:?} is defined twice",
                    p.piece
                )));
            }
            match p.kind {
                PieceType::UserDefined => {
                    user_defined.insert(p.piece.clone());
                }
                PieceType::Unknown => {
                    let previous = unk_id.replace(id);
                    if previous.is_some() {
                        return Err(SpmError::Invalid("more than one unknown piece".into()));
                    }
                }
                PieceType::Byte => {
                    if !options.byte_fallback {
                        return Err(SpmError::Invalid(format!(
                            "byte piece {:?} in a model without byte_fallback",
                            p.piece
                        )));
                    }
                    let b = piece_byte(&p.piece).ok_or_else(|| {
                        SpmError::Invalid(format!("byte piece {:?} is not <0xXX>", p.piece))
                    })?;
                    bytes_found[b as usize] = true;
                    byte_ids.get_or_insert_with(|| Box::new([0; 256]))[b as usize] = id;
                }
                _ => {}
            }
        }
        let unk_id = unk_id.ok_or_else(|| SpmError::Invalid("no unknown piece".into()))?;
        if options.byte_fallback && bytes_found.iter().any(|f| !f) {
            return Err(SpmError::Invalid(
                "byte_fallback is set but the 256 <0xXX> byte pieces are not all there".into(),
            ));
        }
        let user_defined_max = user_defined.iter().map(String::len).max().unwrap_or(0);
        Ok(SpmModel {
            pieces,
            mergeable,
            reserved,
            user_defined,
            user_defined_max,
            unk_id,
            byte_ids,
            options,
        })
    }

    pub fn options(&self) -> &SpmOptions {
        &self.options
    }

    pub fn pieces(&self) -> &[SpmPiece] {
        &self.pieces
    }

    /// Number of pieces (sentencepiece's `GetPieceSize`).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// The id of `piece` when it is a control piece (sentencepiece's `bos_id`, ...).
    fn control_id(&self, piece: &str) -> Option<u32> {
        let id = self.lookup(piece)?;
        (self.kind(id) == Some(PieceType::Control)).then_some(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.control_id(&self.options.bos_piece)
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.control_id(&self.options.eos_piece)
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.control_id(&self.options.pad_piece)
    }

    pub fn kind(&self, id: u32) -> Option<PieceType> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The id of a piece, if the vocabulary has it.
    pub fn lookup(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.mergeable.get(piece))
            .copied()
    }

    /// sentencepiece's `PieceToId`: unknown pieces map to the unknown id.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.lookup(piece).unwrap_or(self.unk_id)
    }

    /// Length in bytes of the unit at the start of `s`: the longest user-defined piece
    /// there, else one character. The bool says whether it was a user-defined piece.
    fn prefix_unit(&self, s: &str) -> (usize, bool) {
        let one = s.chars().next().map_or(0, char::len_utf8);
        if self.user_defined.is_empty() {
            return (one, false);
        }
        let mut len = self.user_defined_max.min(s.len());
        while len > 0 {
            if s.is_char_boundary(len) && self.user_defined.contains(&s[..len]) {
                return (len, true);
            }
            len -= 1;
        }
        (one, false)
    }

    /// sentencepiece's normaliser with identity rules: optional whitespace clean-up, spaces
    /// escaped to "▁", and the dummy prefix.
    pub fn normalize(&self, text: &str, add_dummy_prefix: bool) -> String {
        let o = &self.options;
        let mut input = text;
        if input.is_empty() {
            return String::new();
        }
        if o.remove_extra_whitespaces {
            while !input.is_empty() {
                let (n, _) = self.prefix_unit(input);
                if &input[..n] != " " {
                    break;
                }
                input = &input[n..];
            }
            if input.is_empty() {
                return String::new();
            }
        }
        let space = if o.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        let mut out = String::with_capacity(input.len() + 3);
        if add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = o.remove_extra_whitespaces;
        while !input.is_empty() {
            let (n, _) = self.prefix_unit(input);
            let mut unit = &input[..n];
            while is_prev_space && let Some(rest) = unit.strip_prefix(' ') {
                unit = rest;
            }
            if !unit.is_empty() {
                for c in unit.chars() {
                    if c == ' ' {
                        out.push_str(space);
                    } else {
                        out.push(c);
                    }
                }
                is_prev_space = unit.ends_with(' ');
            }
            input = &input[n..];
            if !o.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if o.remove_extra_whitespaces {
            while let Some(rest) = out.strip_suffix(space) {
                out.truncate(rest.len());
            }
        }
        out
    }

    /// Pieces and ids of `text` (`sp.encode(text, out_type=str)` and `sp.encode(text)`).
    pub fn encode_pieces(&self, text: &str) -> Vec<(String, u32)> {
        self.encode_pieces_with(text, self.options.add_dummy_prefix)
    }

    /// Ids of `text`, as `sp.encode(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_pieces(text)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// [`SpmModel::encode_pieces`] with the dummy prefix chosen by the caller (transformers
    /// turns it off for `legacy: false`).
    pub fn encode_pieces_with(&self, text: &str, add_dummy_prefix: bool) -> Vec<(String, u32)> {
        let normalized = self.normalize(text, add_dummy_prefix);
        let mut out: Vec<(String, u32)> = Vec::new();
        let mut prev_unk = false;
        for (piece, id) in self.bpe(&normalized) {
            let kind = self.kind(id);
            if kind == Some(PieceType::Control) {
                out.push((piece.to_string(), id));
                prev_unk = false;
                continue;
            }
            let is_unk = kind == Some(PieceType::Unknown);
            match (&self.byte_ids, is_unk) {
                (Some(byte_ids), true) if self.options.byte_fallback => {
                    for &b in piece.as_bytes() {
                        out.push((byte_piece(b), byte_ids[b as usize]));
                    }
                }
                _ => match out.last_mut() {
                    // A run of unknown characters becomes one <unk>.
                    Some(last) if prev_unk && is_unk => last.0.push_str(piece),
                    _ => out.push((piece.to_string(), id)),
                },
            }
            prev_unk = is_unk;
        }
        out
    }

    /// The BPE merge loop of `bpe_model.cc`: (piece, id) of each final symbol, with unused
    /// pieces split back into the pieces they were merged from.
    fn bpe<'t>(&self, normalized: &'t str) -> Vec<(&'t str, u32)> {
        if normalized.is_empty() {
            return Vec::new();
        }
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut pos = 0;
        while pos < normalized.len() {
            let (n, frozen) = self.prefix_unit(&normalized[pos..]);
            let index = symbols.len();
            symbols.push(Symbol {
                start: pos,
                len: n,
                prev: index.checked_sub(1),
                next: (pos + n < normalized.len()).then_some(index + 1),
                frozen,
            });
            pos += n;
        }

        let mut agenda = BinaryHeap::new();
        let mut rev_merge: HashMap<&'t str, (&'t str, &'t str)> = HashMap::new();
        let text = |s: &Symbol| &normalized[s.start..s.start + s.len];
        let mut add_pair = |symbols: &[Symbol],
                            agenda: &mut BinaryHeap<Merge>,
                            left: Option<usize>,
                            right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else {
                return;
            };
            let (l, r) = (&symbols[left], &symbols[right]);
            if l.frozen || r.frozen {
                return;
            }
            let piece = &normalized[l.start..l.start + l.len + r.len];
            let Some(&id) = self.mergeable.get(piece) else {
                return;
            };
            let p = &self.pieces[id as usize];
            agenda.push(Merge {
                score: p.score,
                left,
                right,
                size: piece.len(),
            });
            if p.kind == PieceType::Unused {
                rev_merge.insert(piece, (text(l), text(r)));
            }
        };
        for i in 1..symbols.len() {
            add_pair(&symbols, &mut agenda, Some(i - 1), Some(i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            // Stale: one side was merged into something else since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue;
            }
            symbols[top.left].len += r.len;
            symbols[top.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(top.left);
            }
            symbols[top.right].len = 0;
            let prev = symbols[top.left].prev;
            add_pair(&symbols, &mut agenda, prev, Some(top.left));
            let next = symbols[top.left].next;
            add_pair(&symbols, &mut agenda, Some(top.left), next);
        }

        let mut out = Vec::new();
        let mut index = Some(0);
        while let Some(i) = index {
            // Unused pieces may be merge steps but never results: split them again.
            let mut stack = vec![text(&symbols[i])];
            while let Some(w) = stack.pop() {
                let id = self.piece_to_id(w);
                match rev_merge.get(w) {
                    Some(&(a, b)) if self.kind(id) == Some(PieceType::Unused) => {
                        stack.push(b);
                        stack.push(a);
                    }
                    _ => out.push((w, id)),
                }
            }
            index = symbols[i].next;
        }
        out
    }

    /// Text of ids, as `sp.decode(ids)`; an id outside the vocabulary is an error, as there.
    pub fn decode(&self, ids: &[u32]) -> SpmResult<String> {
        let mut pieces = Vec::with_capacity(ids.len());
        for &id in ids {
            pieces.push(
                self.id_to_piece(id)
                    .ok_or_else(|| SpmError::Invalid(format!("id {id} is out of range")))?,
            );
        }
        Ok(self.decode_pieces_with(&pieces, self.options.add_dummy_prefix))
    }

    /// Text of pieces, as `sp.decode(pieces)`.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        self.decode_pieces_with(pieces, self.options.add_dummy_prefix)
    }

    /// [`SpmModel::decode_pieces`] for a model whose dummy prefix is `add_dummy_prefix`: with
    /// it (or with whitespace clean-up) the first "▁" of the text is dropped.
    pub fn decode_pieces_with<S: AsRef<str>>(
        &self,
        pieces: &[S],
        add_dummy_prefix: bool,
    ) -> String {
        let strip_first_space = add_dummy_prefix || self.options.remove_extra_whitespaces;
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for piece in pieces {
            let piece = piece.as_ref();
            let id = self.piece_to_id(piece);
            let kind = self.kind(id);
            if kind == Some(PieceType::Byte) {
                // Byte pieces gather until the next other piece; then they become text.
                bytes.extend(piece_byte(piece));
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match kind {
                Some(PieceType::Control) => {}
                Some(PieceType::Unknown) => {
                    if self.id_to_piece(id) == Some(piece) {
                        text.push_str(&self.options.unk_surface);
                    } else {
                        text.push_str(piece);
                    }
                }
                _ => {
                    let mut piece = piece;
                    if is_bos_ws && strip_first_space {
                        if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                            piece = rest;
                            bos_ws_seen = true;
                        }
                        // sentencepiece keeps looking for a leading space when it removes
                        // extra whitespace.
                        if self.options.remove_extra_whitespaces {
                            bos_ws_seen = false;
                        }
                    }
                    text.push_str(&piece.replace(SPACE_SYMBOL, " "));
                }
            }
        }
        flush_bytes(&mut bytes, &mut text);
        text
    }
}

/// Appends byte pieces as text: each valid UTF-8 character as itself, each byte that does
/// not start one as U+FFFD (sentencepiece's rule, which differs from `from_utf8_lossy`).
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        match decode_utf8_char(rest) {
            Some(n) => {
                text.push_str(std::str::from_utf8(&rest[..n]).unwrap_or("\u{FFFD}"));
                rest = &rest[n..];
            }
            None => {
                text.push('\u{FFFD}');
                rest = &rest[1..];
            }
        }
    }
    bytes.clear();
}

// ---------------------------------------------------------------------------------------
// transformers' slow LlamaTokenizer

/// An added token with transformers' `AddedToken` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    /// Skipped by `decode(skip_special_tokens)` when it is also one of the special-token
    /// attributes (transformers' `all_special_tokens`).
    pub special: bool,
    /// Eats the whitespace on its left.
    pub lstrip: bool,
    /// Eats the whitespace on its right.
    pub rstrip: bool,
    /// Only matches as a whole word.
    pub single_word: bool,
    pub normalized: bool,
}

impl AddedToken {
    /// A special token as a bare string in a config makes (`normalized: false`).
    pub fn special(content: impl Into<String>) -> Self {
        AddedToken {
            content: content.into(),
            special: true,
            lstrip: false,
            rstrip: false,
            single_word: false,
            normalized: false,
        }
    }

    /// A plain added token.
    pub fn plain(content: impl Into<String>) -> Self {
        AddedToken {
            special: false,
            normalized: true,
            ..AddedToken::special(content)
        }
    }
}

/// What tokenizer_config.json says to a slow `LlamaTokenizer`. `Default` is the class's
/// own defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaTokenizerConfig {
    pub bos_token: Option<AddedToken>,
    pub eos_token: Option<AddedToken>,
    pub unk_token: Option<AddedToken>,
    pub sep_token: Option<AddedToken>,
    pub pad_token: Option<AddedToken>,
    pub cls_token: Option<AddedToken>,
    pub mask_token: Option<AddedToken>,
    pub additional_special_tokens: Vec<AddedToken>,
    /// `added_tokens_decoder`: id → token.
    pub added_tokens: Vec<(u32, AddedToken)>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    /// Absent or null in the config means true.
    pub legacy: bool,
    pub add_prefix_space: bool,
    pub clean_up_tokenization_spaces: bool,
}

impl Default for LlamaTokenizerConfig {
    fn default() -> Self {
        LlamaTokenizerConfig {
            bos_token: Some(AddedToken::special("<s>")),
            eos_token: Some(AddedToken::special("</s>")),
            unk_token: Some(AddedToken::special("<unk>")),
            sep_token: None,
            pad_token: None,
            cls_token: None,
            mask_token: None,
            additional_special_tokens: Vec::new(),
            added_tokens: Vec::new(),
            add_bos_token: true,
            add_eos_token: false,
            legacy: true,
            add_prefix_space: true,
            clean_up_tokenization_spaces: false,
        }
    }
}

impl LlamaTokenizerConfig {
    /// The special-token attributes in transformers' order (`SPECIAL_TOKENS_ATTRIBUTES`).
    fn special_attributes(&self) -> impl Iterator<Item = &AddedToken> {
        [
            &self.bos_token,
            &self.eos_token,
            &self.unk_token,
            &self.sep_token,
            &self.pad_token,
            &self.cls_token,
            &self.mask_token,
        ]
        .into_iter()
        .flatten()
        .chain(&self.additional_special_tokens)
    }
}

/// transformers' `Trie`, whose `split` is reproduced step by step: its longest-match
/// lookahead has quirks that a textbook leftmost-longest matcher would not share.
#[derive(Clone, Debug, Default)]
struct Trie {
    /// Node 0 is the root.
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: HashMap<char, usize>,
    terminal: bool,
}

impl Trie {
    fn new() -> Self {
        Trie {
            nodes: vec![TrieNode::default()],
        }
    }

    fn add(&mut self, word: &str) {
        if word.is_empty() {
            return;
        }
        let mut node = 0;
        for c in word.chars() {
            node = match self.nodes[node].children.get(&c) {
                Some(&n) => n,
                None => {
                    self.nodes.push(TrieNode::default());
                    let n = self.nodes.len() - 1;
                    self.nodes[node].children.insert(c, n);
                    n
                }
            };
        }
        self.nodes[node].terminal = true;
    }

    fn child(&self, node: usize, c: Option<char>) -> Option<usize> {
        c.and_then(|c| self.nodes[node].children.get(&c).copied())
    }

    /// `Trie.split`: `text` cut at the boundaries of the added tokens found in it.
    fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let chars: Vec<char> = text.chars().collect();
        let n = chars.len();
        // Partial matches: (start, trie node), in start order like Python's dict.
        let mut states: Vec<(usize, usize)> = Vec::new();
        let mut offsets = vec![0usize];
        let mut skip = 0usize;
        for current in 0..n {
            let current_char = chars[current];
            if skip > 0 && current < skip {
                continue;
            }
            let mut to_remove = Vec::new();
            let mut reset = false;
            for k in 0..states.len() {
                let (start, node) = states[k];
                if self.nodes[node].terminal {
                    let mut start = start;
                    let mut end = current;
                    for &(lookstart, look_node) in &states {
                        let mut look_node = look_node;
                        let mut lookahead_index;
                        if lookstart > start {
                            break;
                        } else if lookstart < start {
                            lookahead_index = current + 1;
                            end = current + 1;
                        } else {
                            lookahead_index = current;
                            end = current;
                        }
                        let mut next_char = chars.get(lookahead_index).copied();
                        if self.nodes[look_node].terminal {
                            start = lookstart;
                            end = lookahead_index;
                            skip = lookahead_index;
                        }
                        while let Some(next) = self.child(look_node, next_char) {
                            look_node = next;
                            lookahead_index += 1;
                            if self.nodes[look_node].terminal {
                                start = lookstart;
                                end = lookahead_index;
                                skip = lookahead_index;
                            }
                            if lookahead_index == n {
                                break;
                            }
                            next_char = chars.get(lookahead_index).copied();
                        }
                    }
                    offsets.push(start);
                    offsets.push(end);
                    reset = true;
                    break;
                } else if let Some(next) = self.child(node, Some(current_char)) {
                    states[k].1 = next;
                } else {
                    to_remove.push(start);
                }
            }
            if reset {
                states.clear();
            } else {
                states.retain(|(s, _)| !to_remove.contains(s));
            }
            if current >= skip
                && let Some(next) = self.child(0, Some(current_char))
            {
                states.push((current, next));
            }
        }
        if let Some(&(start, _)) = states.iter().find(|(_, node)| self.nodes[*node].terminal) {
            offsets.push(start);
            offsets.push(n);
        }
        offsets.push(n);

        // Character offsets → byte offsets.
        let mut byte_at: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        byte_at.push(text.len());
        let mut out = Vec::new();
        let mut start = 0;
        for end in offsets {
            if start >= end {
                continue;
            }
            out.push(&text[byte_at[start]..byte_at[end]]);
            start = end;
        }
        out
    }
}

/// Python's `str.isspace` (Rust's `char::is_whitespace` plus the ASCII separators
/// U+001C..U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    let mut s = text.to_string();
    for (a, b) in [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ] {
        s = s.replace(a, b);
    }
    s
}

/// transformers 4's slow `LlamaTokenizer` over an [`SpmModel`] (see the module docs).
#[derive(Clone, Debug)]
pub struct LlamaSlowTokenizer {
    model: SpmModel,
    legacy: bool,
    add_prefix_space: bool,
    add_bos_token: bool,
    add_eos_token: bool,
    clean_up: bool,
    /// The SentencePiece dummy prefix transformers' `sp_model` has: the file's when legacy,
    /// off otherwise.
    dummy_prefix: bool,
    added_decoder: HashMap<u32, AddedToken>,
    added_encoder: HashMap<String, u32>,
    trie: Trie,
    all_special_tokens: HashSet<String>,
    all_special_ids: HashSet<u32>,
    /// Added tokens that decode on their own, joined with spaces (transformers'
    /// `legacy_added_tokens`).
    standalone: HashSet<String>,
    unk_token: String,
    unk_token_length: usize,
    bos_token: Option<String>,
    eos_token: Option<String>,
    vocab_size: usize,
}

/// A token of `tokenize`: an added token or a SentencePiece piece.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Added(String),
    Piece(String, u32),
}

impl Tok {
    fn text(&self) -> &str {
        match self {
            Tok::Added(s) | Tok::Piece(s, _) => s,
        }
    }
}

impl LlamaSlowTokenizer {
    pub fn new(model: SpmModel, config: LlamaTokenizerConfig) -> Self {
        let dummy_prefix = config.legacy && model.options.add_dummy_prefix;
        let mut added_decoder: HashMap<u32, AddedToken> = HashMap::new();
        for (id, tok) in &config.added_tokens {
            added_decoder.insert(*id, tok.clone());
        }
        let by_content: HashMap<&str, &AddedToken> = config
            .added_tokens
            .iter()
            .map(|(_, t)| (t.content.as_str(), t))
            .collect();
        // from_pretrained swaps each special-token attribute for the added token with the
        // same content.
        let specials: Vec<AddedToken> = config
            .special_attributes()
            .map(|t| by_content.get(t.content.as_str()).map_or(t, |a| *a).clone())
            .collect();
        let all_special_tokens: HashSet<String> =
            specials.iter().map(|t| t.content.clone()).collect();

        // PreTrainedTokenizer.__init__: special tokens that are not added tokens yet are
        // added, with the id of the piece of the same text or a new id past the vocabulary.
        let mut added_encoder: HashMap<String, u32> = added_decoder
            .iter()
            .map(|(id, t)| (t.content.clone(), *id))
            .collect();
        let mut vocab_keys: HashSet<&str> = model.pieces.iter().map(|p| p.piece.as_str()).collect();
        let added_contents: Vec<String> = added_encoder.keys().cloned().collect();
        vocab_keys.extend(added_contents.iter().map(String::as_str));
        let new_idx = vocab_keys.len() as u32;
        let mut added = 0u32;
        for tok in &specials {
            if tok.content.is_empty() || added_encoder.contains_key(&tok.content) {
                continue;
            }
            let id = match model.lookup(&tok.content) {
                Some(id) => id,
                None => {
                    added += 1;
                    new_idx + added - 1
                }
            };
            let mut tok = tok.clone();
            tok.special = true;
            added_encoder.insert(tok.content.clone(), id);
            added_decoder.insert(id, tok);
        }

        let mut trie = Trie::new();
        let mut ids: Vec<&u32> = added_decoder.keys().collect();
        ids.sort();
        for id in ids {
            trie.add(&added_decoder[id].content);
        }
        let token_to_id = |t: &str| {
            added_encoder
                .get(t)
                .copied()
                .unwrap_or_else(|| model.piece_to_id(t))
        };
        let all_special_ids = all_special_tokens.iter().map(|t| token_to_id(t)).collect();
        let mut standalone: HashSet<String> = added_encoder
            .keys()
            .filter(|t| !all_special_tokens.contains(*t))
            .cloned()
            .collect();
        for t in &config.additional_special_tokens {
            if token_to_id(&t.content) as usize >= model.len() {
                standalone.insert(t.content.clone());
            }
        }
        let unk_token = config
            .unk_token
            .as_ref()
            .map(|t| t.content.clone())
            .unwrap_or_default();
        let unk_token_length = model.encode_pieces_with(&unk_token, dummy_prefix).len();
        let vocab_size = model.len()
            + added_decoder
                .keys()
                .filter(|&&id| id as usize >= model.len())
                .count();
        LlamaSlowTokenizer {
            legacy: config.legacy,
            add_prefix_space: config.add_prefix_space,
            add_bos_token: config.add_bos_token,
            add_eos_token: config.add_eos_token,
            clean_up: config.clean_up_tokenization_spaces,
            dummy_prefix,
            trie,
            all_special_ids,
            all_special_tokens,
            standalone,
            unk_token,
            unk_token_length,
            bos_token: config.bos_token.map(|t| t.content),
            eos_token: config.eos_token.map(|t| t.content),
            vocab_size,
            added_decoder,
            added_encoder,
            model,
        }
    }

    pub fn model(&self) -> &SpmModel {
        &self.model
    }

    /// Pieces plus added tokens past them (`len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The id of a token (added tokens first, then pieces); `None` when neither has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_encoder
            .get(token)
            .copied()
            .or_else(|| self.model.lookup(token))
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        match self.added_decoder.get(&id) {
            Some(t) => Some(&t.content),
            None => self.model.id_to_piece(id),
        }
    }

    /// `convert_tokens_to_ids` for one token: unknown tokens are the unknown id.
    fn convert_token(&self, token: &str) -> u32 {
        self.added_encoder
            .get(token)
            .copied()
            .unwrap_or_else(|| self.model.piece_to_id(token))
    }

    /// `tokenizer(text, add_special_tokens=...).input_ids`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if add_special_tokens
            && self.add_bos_token
            && let Some(bos) = &self.bos_token
        {
            ids.push(self.convert_token(bos));
        }
        ids.extend(self.tokenize(text).iter().map(|t| match t {
            Tok::Added(s) => self.convert_token(s),
            Tok::Piece(s, _) => self.convert_token(s),
        }));
        if add_special_tokens
            && self.add_eos_token
            && let Some(eos) = &self.eos_token
        {
            ids.push(self.convert_token(eos));
        }
        ids
    }

    /// The tokens of `text` as strings (`tokenizer.tokenize(text)`).
    pub fn tokenize_to_strings(&self, text: &str) -> Vec<String> {
        self.tokenize(text)
            .into_iter()
            .map(|t| t.text().to_string())
            .collect()
    }

    /// `LlamaTokenizer.tokenize`.
    fn tokenize(&self, text: &str) -> Vec<Tok> {
        if self.legacy || text.is_empty() {
            return self.base_tokenize(text);
        }
        let mut t = text.replace(SPACE_SYMBOL, " ");
        if self.add_prefix_space {
            t.insert_str(0, SPACE_SYMBOL);
        }
        let mut tokens = self.base_tokenize(&t);
        if tokens.len() > 1
            && tokens[0].text() == SPACE_SYMBOL
            && self.all_special_tokens.contains(tokens[1].text())
        {
            tokens.remove(0);
        }
        tokens
    }

    /// `PreTrainedTokenizer.tokenize`: split on added tokens, apply their strip flags,
    /// encode the rest.
    fn base_tokenize(&self, text: &str) -> Vec<Tok> {
        let mut chunks: Vec<String> = self
            .trie
            .split(text)
            .into_iter()
            .map(String::from)
            .collect();
        for i in 0..chunks.len() {
            let token = chunks[i].clone();
            let Some(id) = self.added_encoder.get(&token) else {
                continue;
            };
            let Some(tok) = self.added_decoder.get(id) else {
                continue;
            };
            // Python reads its neighbours before stripping them.
            let left = (i > 0 && !chunks[i - 1].is_empty()).then(|| chunks[i - 1].clone());
            let right =
                (i + 1 < chunks.len() && !chunks[i + 1].is_empty()).then(|| chunks[i + 1].clone());
            if tok.rstrip
                && let Some(r) = &right
            {
                chunks[i + 1] = r.trim_start_matches(py_isspace).to_string();
            }
            if tok.lstrip
                && let Some(l) = &left
            {
                chunks[i - 1] = l.trim_end_matches(py_isspace).to_string();
            }
            if tok.single_word && left.as_ref().is_some_and(|l| !l.ends_with(' ')) {
                chunks[i - 1].push_str(&token);
                chunks[i].clear();
            } else if tok.single_word && right.as_ref().is_some_and(|r| !r.starts_with(' ')) {
                chunks[i + 1].insert_str(0, &token);
                chunks[i].clear();
            }
        }
        let mut out = Vec::new();
        for chunk in chunks {
            if chunk.is_empty() {
                continue;
            }
            if self.added_encoder.contains_key(&chunk) {
                out.push(Tok::Added(chunk));
            } else {
                out.extend(
                    self.sp_tokenize(&chunk)
                        .into_iter()
                        .map(|(p, id)| Tok::Piece(p, id)),
                );
            }
        }
        out
    }

    /// `LlamaTokenizer._tokenize`.
    fn sp_tokenize(&self, text: &str) -> Vec<(String, u32)> {
        if self.legacy || !(text.starts_with(SPACE_SYMBOL) || text.starts_with(' ')) {
            return self.model.encode_pieces_with(text, self.dummy_prefix);
        }
        // Encode "<unk>" + text and drop the pieces of "<unk>": SentencePiece without a
        // dummy prefix would otherwise lose the text's leading space.
        let prefixed = format!("{}{text}", self.unk_token);
        let mut pieces = self.model.encode_pieces_with(&prefixed, self.dummy_prefix);
        if pieces.len() >= self.unk_token_length {
            pieces.drain(..self.unk_token_length);
        }
        pieces
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)`. Ids the tokenizer does not know
    /// are left out (transformers would raise; `tokenizers` skips them too).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let tokens: Vec<&str> = ids
            .iter()
            .filter(|id| !(skip_special_tokens && self.all_special_ids.contains(id)))
            .filter_map(|&id| self.id_to_token(id))
            .collect();
        let mut sub_texts: Vec<String> = Vec::new();
        let mut current: Vec<&str> = Vec::new();
        for token in tokens {
            if self.standalone.contains(token) {
                if !current.is_empty() {
                    let s = self.tokens_to_string(&current);
                    if !s.is_empty() {
                        sub_texts.push(s);
                    }
                    current.clear();
                }
                sub_texts.push(token.to_string());
            } else {
                current.push(token);
            }
        }
        if !current.is_empty() {
            sub_texts.push(self.tokens_to_string(&current));
        }
        // `_decode`'s spaces_between_special_tokens is true unless a caller passes it.
        let text = sub_texts.join(" ");
        if self.clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }

    /// `LlamaTokenizer.convert_tokens_to_string`.
    fn tokens_to_string(&self, tokens: &[&str]) -> String {
        let mut out = String::new();
        let mut current: Vec<&str> = Vec::new();
        let mut prev_is_special = false;
        for (i, &token) in tokens.iter().enumerate() {
            // The prefix space transformers added when encoding goes away again.
            let token = if i == 0 && self.add_prefix_space {
                token.strip_prefix(SPACE_SYMBOL).unwrap_or(token)
            } else {
                token
            };
            if self.all_special_tokens.contains(token) {
                if !prev_is_special && i != 0 && self.legacy {
                    out.push(' ');
                }
                out.push_str(&self.model.decode_pieces_with(&current, self.dummy_prefix));
                out.push_str(token);
                prev_is_special = true;
                current.clear();
            } else {
                if prev_is_special
                    && i == 1
                    && self.add_prefix_space
                    && !token.starts_with(SPACE_SYMBOL)
                {
                    out.push(' ');
                }
                current.push(token);
                prev_is_special = false;
            }
        }
        out.push_str(&self.model.decode_pieces_with(&current, self.dummy_prefix));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A minimal protobuf writer for building test models.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(field: u64, wire: u8, out: &mut Vec<u8>) {
        varint((field << 3) | u64::from(wire), out);
    }
    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        key(field, WIRE_LEN, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    fn int_field(field: u64, v: i64, out: &mut Vec<u8>) {
        key(field, WIRE_VARINT, out);
        varint(v as u64, out);
    }
    fn piece(text: &str, score: f32, kind: PieceType) -> Vec<u8> {
        let mut p = Vec::new();
        len_field(1, text.as_bytes(), &mut p);
        key(2, WIRE_FIXED32, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        int_field(3, i64::from(kind.code()), &mut p);
        p
    }

    /// A BPE model: <unk>, <s>, </s>, then `pieces`; identity normaliser, no dummy prefix
    /// unless asked.
    fn model_bytes(pieces: &[(&str, f32, PieceType)], dummy: bool, byte_fallback: bool) -> Vec<u8> {
        let mut m = Vec::new();
        let mut all = vec![
            ("<unk>", 0.0, PieceType::Unknown),
            ("<s>", 0.0, PieceType::Control),
            ("</s>", 0.0, PieceType::Control),
        ];
        let bytes: Vec<String> = (0..=255u8).map(byte_piece).collect();
        if byte_fallback {
            all.extend(bytes.iter().map(|b| (b.as_str(), 0.0, PieceType::Byte)));
        }
        all.extend_from_slice(pieces);
        for (t, s, k) in all {
            len_field(1, &piece(t, s, k), &mut m);
        }
        let mut t = Vec::new();
        int_field(3, i64::from(MODEL_TYPE_BPE), &mut t);
        int_field(35, i64::from(byte_fallback), &mut t);
        int_field(43, -1, &mut t);
        len_field(2, &t, &mut m);
        let mut n = Vec::new();
        len_field(1, b"identity", &mut n);
        int_field(3, i64::from(dummy), &mut n);
        int_field(4, 0, &mut n);
        len_field(3, &n, &mut m);
        m
    }

    fn pieces_of(m: &SpmModel, text: &str) -> Vec<String> {
        m.encode_pieces(text).into_iter().map(|(p, _)| p).collect()
    }

    use PieceType::{Normal, Unused, UserDefined};

    #[test]
    fn reads_every_field() {
        let mut bytes = model_bytes(&[("a", -1.5, Normal)], true, false);
        // Unknown fields of every wire type are skipped.
        int_field(99, 7, &mut bytes);
        key(98, WIRE_FIXED64, &mut bytes);
        bytes.extend_from_slice(&[0; 8]);
        key(97, WIRE_FIXED32, &mut bytes);
        bytes.extend_from_slice(&[0; 4]);
        len_field(96, b"xyz", &mut bytes);
        // A second trainer_spec is merged into the first.
        let mut t = Vec::new();
        len_field(44, b"<?>", &mut t);
        len_field(2, &t, &mut bytes);
        let proto = ModelProto::parse(&bytes).unwrap();
        assert_eq!(proto.pieces.len(), 4);
        assert_eq!(proto.pieces[3], SpmPiece::new("a", -1.5, Normal));
        assert_eq!(proto.pieces[0].kind, PieceType::Unknown);
        assert_eq!(proto.trainer_spec.model_type, MODEL_TYPE_BPE);
        assert_eq!(proto.trainer_spec.pad_id, -1);
        assert_eq!(proto.trainer_spec.eos_id, 2);
        assert_eq!(proto.trainer_spec.unk_surface.as_deref(), Some("<?>"));
        assert_eq!(proto.normalizer_spec.name, "identity");
        assert!(proto.normalizer_spec.add_dummy_prefix);
        assert!(!proto.normalizer_spec.remove_extra_whitespaces);
        assert!(proto.normalizer_spec.escape_whitespaces);
        let m = SpmModel::from_proto(proto).unwrap();
        assert_eq!(m.decode(&[0]).unwrap(), "<?>");
        assert_eq!(
            (m.bos_id(), m.eos_id(), m.pad_id()),
            (Some(1), Some(2), None)
        );
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let good = model_bytes(&[("ab", 0.0, Normal)], true, true);
        assert!(SpmModel::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            // Any prefix either parses (cut at a field boundary) or fails cleanly.
            if let Err(e) = ModelProto::parse(&good[..cut]) {
                assert!(
                    matches!(e, SpmError::Truncated { .. } | SpmError::Malformed { .. }),
                    "{e}"
                );
            }
        }
        let cut = ModelProto::parse(&good[..good.len() - 2]).unwrap_err();
        assert!(matches!(cut, SpmError::Truncated { .. }), "{cut}");

        let err = |b: &[u8]| ModelProto::parse(b).unwrap_err();
        assert!(matches!(err(&[0x0b]), SpmError::Malformed { .. })); // wire type 3
        assert!(matches!(err(&[0x00]), SpmError::Malformed { .. })); // field 0
        assert!(matches!(err(&[0x08; 12]), SpmError::Malformed { .. })); // endless varint
        let mut huge = vec![0x0a];
        varint(u64::MAX, &mut huge);
        assert!(matches!(err(&huge), SpmError::Truncated { .. }));
        let mut bad_utf8 = Vec::new();
        len_field(1, &[0x0a, 0x02, 0xff, 0xfe], &mut bad_utf8);
        assert!(matches!(err(&bad_utf8), SpmError::Malformed { .. }));
        let mut bad_type = Vec::new();
        let mut p = Vec::new();
        len_field(1, b"x", &mut p);
        int_field(3, 9, &mut p);
        len_field(1, &p, &mut bad_type);
        assert!(matches!(err(&bad_type), SpmError::Malformed { .. }));
        let mut wrong_wire = Vec::new();
        int_field(1, 5, &mut wrong_wire);
        assert!(matches!(err(&wrong_wire), SpmError::Malformed { .. }));
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let base = model_bytes(&[], true, false);
        let with_trainer = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = base.clone();
            let mut t = Vec::new();
            f(&mut t);
            len_field(2, &t, &mut b);
            SpmModel::from_bytes(&b).unwrap_err()
        };
        let e = with_trainer(&|t| int_field(3, i64::from(MODEL_TYPE_UNIGRAM), t));
        assert!(
            matches!(&e, SpmError::Unsupported(m) if m.contains("unigram")),
            "{e}"
        );
        let e = with_trainer(&|t| int_field(3, i64::from(MODEL_TYPE_WORD), t));
        assert!(matches!(e, SpmError::Unsupported(_)), "{e}");
        let e = with_trainer(&|t| int_field(24, 1, t));
        assert!(matches!(e, SpmError::Unsupported(_)), "{e}");
        // Byte fallback without the byte pieces.
        let e = with_trainer(&|t| int_field(35, 1, t));
        assert!(matches!(e, SpmError::Invalid(_)), "{e}");

        let mut nfkc = base.clone();
        let mut n = Vec::new();
        len_field(1, b"nmt_nfkc", &mut n);
        len_field(2, &[1, 2, 3, 4], &mut n);
        len_field(3, &n, &mut nfkc);
        let e = SpmModel::from_bytes(&nfkc).unwrap_err();
        assert!(
            matches!(&e, SpmError::Unsupported(m) if m.contains("nmt_nfkc")),
            "{e}"
        );

        // No model_type at all means unigram, the proto default.
        let mut no_type = Vec::new();
        len_field(1, &piece("<unk>", 0.0, PieceType::Unknown), &mut no_type);
        assert!(matches!(
            SpmModel::from_bytes(&no_type),
            Err(SpmError::Unsupported(_))
        ));

        let parts = |p: Vec<SpmPiece>| SpmModel::from_parts(p, SpmOptions::default()).unwrap_err();
        assert!(matches!(
            parts(vec![SpmPiece::new("a", 0.0, Normal)]),
            SpmError::Invalid(_)
        ));
        let dup = vec![
            SpmPiece::new("<unk>", 0.0, PieceType::Unknown),
            SpmPiece::new("a", 0.0, Normal),
            SpmPiece::new("a", 0.0, Normal),
        ];
        assert!(matches!(parts(dup), SpmError::Invalid(_)));
        let empty = vec![
            SpmPiece::new("<unk>", 0.0, PieceType::Unknown),
            SpmPiece::new("", 0.0, Normal),
        ];
        assert!(matches!(parts(empty), SpmError::Invalid(_)));
    }

    #[test]
    fn merges_highest_score_first_and_leftmost_on_ties() {
        let tie = model_bytes(
            &[
                ("a", -9.0, Normal),
                ("b", -9.0, Normal),
                ("c", -9.0, Normal),
                ("ab", -1.0, Normal),
                ("bc", -1.0, Normal),
            ],
            false,
            false,
        );
        let m = SpmModel::from_bytes(&tie).unwrap();
        assert_eq!(pieces_of(&m, "abc"), ["ab", "c"]);
        assert_eq!(pieces_of(&m, "cabc"), ["c", "ab", "c"]);
        // -0.0 and 0.0 tie, as in C++.
        let zeros = model_bytes(&[("ab", -0.0, Normal), ("bc", 0.0, Normal)], false, false);
        let m = SpmModel::from_bytes(&zeros).unwrap();
        assert_eq!(pieces_of(&m, "abc"), ["ab", "c"]);

        let right = model_bytes(&[("ab", -2.0, Normal), ("bc", -1.0, Normal)], false, false);
        let m = SpmModel::from_bytes(&right).unwrap();
        assert_eq!(pieces_of(&m, "abc"), ["a", "bc"]);
        // Merges continue from merged symbols: "bc" first, then "a" + "bc".
        let on = model_bytes(
            &[
                ("ab", -2.0, Normal),
                ("bc", -1.0, Normal),
                ("abc", -3.0, Normal),
            ],
            false,
            false,
        );
        let m = SpmModel::from_bytes(&on).unwrap();
        assert_eq!(pieces_of(&m, "abcc"), ["abc", "c"]);
        let chain = model_bytes(&[("ab", -1.0, Normal), ("abc", -3.0, Normal)], false, false);
        let m = SpmModel::from_bytes(&chain).unwrap();
        assert_eq!(pieces_of(&m, "abcab"), ["abc", "ab"]);
    }

    #[test]
    fn unused_pieces_are_split_again() {
        let b = model_bytes(
            &[
                ("a", 0.0, Normal),
                ("b", 0.0, Normal),
                ("c", 0.0, Normal),
                ("ab", -1.0, Unused),
                ("abc", -2.0, Normal),
            ],
            false,
            false,
        );
        let m = SpmModel::from_bytes(&b).unwrap();
        assert_eq!(pieces_of(&m, "abc"), ["abc"]);
        assert_eq!(pieces_of(&m, "abx"), ["a", "b", "x"]);
        assert_eq!(m.encode("abx"), [3, 4, 0]);
    }

    #[test]
    fn user_defined_pieces_stay_whole() {
        let b = model_bytes(
            &[
                ("<img>", 0.0, UserDefined),
                ("<i", 5.0, Normal),
                ("x<", 5.0, Normal),
                ("▁x", 1.0, Normal),
            ],
            true,
            false,
        );
        let m = SpmModel::from_bytes(&b).unwrap();
        assert_eq!(pieces_of(&m, "x<img>x"), ["▁x", "<img>", "x"]);
        assert_eq!(pieces_of(&m, "<i"), ["▁", "<i"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_or_unk() {
        let b = model_bytes(&[("▁", 0.0, Normal), ("a", 0.0, Normal)], true, true);
        let m = SpmModel::from_bytes(&b).unwrap();
        assert_eq!(pieces_of(&m, "aé"), ["▁", "a", "<0xC3>", "<0xA9>"]);
        assert_eq!(m.decode(&m.encode("aé")).unwrap(), "aé");
        let b = model_bytes(&[("▁", 0.0, Normal), ("a", 0.0, Normal)], true, false);
        let m = SpmModel::from_bytes(&b).unwrap();
        // A run of unknown characters is one <unk>.
        assert_eq!(
            m.encode_pieces("aéé a"),
            [
                ("▁".to_string(), 3),
                ("a".to_string(), 4),
                ("éé".to_string(), 0),
                ("▁".to_string(), 3),
                ("a".to_string(), 4),
            ]
        );
        assert_eq!(m.decode(&[4, 0, 3, 4]).unwrap(), "a \u{2047}  a");
        assert_eq!(m.decode_pieces(&["a", "éé"]), "aéé");
        assert!(m.decode(&[99]).is_err());
    }

    #[test]
    fn normalizer_whitespace_rules() {
        let b = model_bytes(&[], true, true);
        let mut m = SpmModel::from_bytes(&b).unwrap();
        assert_eq!(m.normalize(" a  b ", true), "▁▁a▁▁b▁");
        assert_eq!(m.normalize("", true), "");
        m.options.remove_extra_whitespaces = true;
        assert_eq!(m.normalize("  a  b  ", true), "▁a▁b");
        assert_eq!(m.normalize("   ", true), "");
        m.options.escape_whitespaces = false;
        assert_eq!(m.normalize(" a b", false), "a b");
    }

    #[test]
    fn decoder_bytes_and_leading_space() {
        let b = model_bytes(&[("▁a", 0.0, Normal), ("▁", 0.0, Normal)], true, true);
        let m = SpmModel::from_bytes(&b).unwrap();
        let p = |s: &[&str]| m.decode_pieces(s);
        assert_eq!(p(&["▁a", "▁a"]), "a a");
        assert_eq!(p(&["<s>", "▁a"]), "a");
        assert_eq!(p(&["▁", "▁a"]), " a");
        assert_eq!(p(&["<0x41>", "▁a"]), "A a");
        // Invalid bytes are one U+FFFD each; a valid U+FFFD stays one.
        assert_eq!(p(&["<0xE6>", "<0x9D>"]), "\u{FFFD}\u{FFFD}");
        assert_eq!(p(&["<0xC0>", "<0x80>"]), "\u{FFFD}\u{FFFD}");
        assert_eq!(p(&["<0xEF>", "<0xBF>", "<0xBD>"]), "\u{FFFD}");
        assert_eq!(p(&["<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁a"]), "😀 a");
        assert_eq!(m.decode_pieces_with(&["▁a"], false), " a");
    }

    #[test]
    fn byte_pieces_parse_strictly() {
        assert_eq!(piece_byte("<0x0A>"), Some(10));
        assert_eq!(piece_byte("<0xff>"), None);
        assert_eq!(piece_byte("<0x0A0>"), None);
        assert_eq!(byte_piece(0xab), "<0xAB>");
    }

    #[test]
    fn trie_splits_like_transformers() {
        let split = |words: &[&str], text: &str| {
            let mut t = Trie::new();
            for w in words {
                t.add(w);
            }
            t.split(text)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        // Expected values from transformers' Trie (tests/reference/fixtures_spm.py).
        assert_eq!(
            split(
                &["[CLS]", "extra_id_1", "extra_id_100"],
                "[CLS] This is a extra_id_100"
            ),
            ["[CLS]", " This is a ", "extra_id_100"]
        );
        assert_eq!(
            split(
                &["TOKEN]", "[SPECIAL_TOKEN]"],
                "This is something [SPECIAL_TOKEN]"
            ),
            ["This is something ", "[SPECIAL_TOKEN]"]
        );
        assert_eq!(split(&["AB", "B", "C"], "ABC"), ["AB", "C"]);
        assert_eq!(split(&["ABC", "B", "CD"], "ABCD"), ["ABC", "D"]);
        assert_eq!(split(&["blowing", "lower"], "blower"), ["b", "lower"]);
        assert_eq!(
            split(&["</s>", "<s>"], "</s></s><s>x"),
            ["</s>", "</s>", "<s>", "x"]
        );
        assert_eq!(split(&["ab", "bcd"], "xabcdz"), ["x", "ab", "cdz"]);
        assert_eq!(split(&["東京"], "大東京都"), ["大", "東京", "都"]);
        assert_eq!(split(&[], ""), Vec::<String>::new());
    }

    #[test]
    fn python_whitespace() {
        assert!(py_isspace('\u{1f}') && py_isspace('\u{3000}') && py_isspace('\n'));
        assert!(!py_isspace('\u{200b}') && !py_isspace('x'));
    }
}
