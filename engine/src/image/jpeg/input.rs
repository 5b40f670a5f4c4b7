//! The JPEG byte stream as libjpeg reads it: marker segments, and between them the
//! entropy-coded data as a bit stream.
//!
//! Damaged data is handled the way libjpeg handles it, because PIL hands those pixels to
//! the model instead of failing: when the entropy-coded data runs into a marker before a
//! scan needs it to, the missing bits read as zeros (and the decoder then leaves the rest
//! of the restart interval blank); restart markers out of sequence are resynchronised with
//! libjpeg's rules. Data that simply ends is different: PIL raises "image file is
//! truncated", so we fail as well.

use super::{Result, corrupt, truncated};
use crate::image::jpeg::huffman::HuffTable;

pub(super) const RST0: u8 = 0xD0;
pub(super) const RST7: u8 = 0xD7;
pub(super) const SOF0: u8 = 0xC0;

pub(super) struct Input<'a> {
    data: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// A marker read from the stream but not acted on yet (libjpeg's `unread_marker`):
    /// once the entropy decoder has hit one, it reads no further bytes.
    pub(super) unread_marker: Option<u8>,
    /// Bits not consumed yet, most significant first: the top `nbits` bits are valid.
    buf: u64,
    nbits: u32,
    /// How many of the lowest valid bits are zero padding added after a marker (or the
    /// end of the data): consuming into them means the data was insufficient.
    pad: u32,
    /// Set once padding has been consumed (sticky until the bit buffer is reset).
    overrun: bool,
    /// The entropy-coded data ran into the end of the file: no end-of-image marker can
    /// follow, so the file is truncated whatever else happens.
    pub(super) exhausted: bool,
}

impl<'a> Input<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Input {
            data,
            pos: 0,
            unread_marker: None,
            buf: 0,
            nbits: 0,
            pad: 0,
            overrun: false,
            exhausted: false,
        }
    }

    #[cfg(test)]
    fn pos(&self) -> usize {
        self.pos
    }

    // ---------------------------------------------------------------------------------
    // Marker segments.

    pub(super) fn byte(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.data.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// The start-of-image marker, which must be the first two bytes (no padding before it).
    pub(super) fn first_marker(&mut self) -> Result<()> {
        if self.data.get(..2) != Some(&[0xFF, 0xD8]) {
            return Err(corrupt(
                "the data does not start with a JPEG start-of-image marker",
            ));
        }
        self.pos = 2;
        Ok(())
    }

    /// The marker to act on next: the unread one, or the next in the stream.
    pub(super) fn read_marker(&mut self) -> Result<u8> {
        match self.unread_marker.take() {
            Some(m) => Ok(m),
            None => self.next_marker(),
        }
    }

    /// Scans to the next marker like libjpeg's `next_marker`: bytes other than 0xFF are
    /// skipped (libjpeg warns about them), as are fill bytes (0xFF runs) and stuffed
    /// zeros (`FF 00`). Running out of data means the file is truncated.
    fn next_marker(&mut self) -> Result<u8> {
        loop {
            let skip = self.data[self.pos.min(self.data.len())..]
                .iter()
                .position(|&b| b == 0xFF)
                .ok_or_else(truncated)?;
            self.pos += skip + 1;
            let mut c = self.byte()?;
            while c == 0xFF {
                c = self.byte()?;
            }
            if c != 0 {
                return Ok(c);
            }
        }
    }

    /// Processes the restart marker expected after a restart interval (libjpeg's
    /// `read_restart_marker` with `jpeg_resync_to_restart`). The bit buffer has been
    /// discarded. `next` is the expected RSTn number, advanced here.
    pub(super) fn read_restart_marker(&mut self, next: &mut u8) -> Result<()> {
        if self.unread_marker.is_none() {
            self.unread_marker = Some(self.next_marker()?);
        }
        let desired = i32::from(*next);
        if self.unread_marker == Some(RST0 + *next) {
            self.unread_marker = None;
        } else {
            // Out of sequence: libjpeg's resynchronisation. Other markers (the end of the
            // scan) are left unread, so the rest of the scan reads as an empty segment;
            // a restart marker one or two ahead too; an earlier one is skipped.
            while let Some(marker) = self.unread_marker {
                let m = i32::from(marker);
                let rst = |d: i32| i32::from(RST0) + (d & 7);
                let is_restart = (RST0..=RST7).contains(&marker);
                if marker < SOF0 || (is_restart && (m == rst(desired - 1) || m == rst(desired - 2)))
                {
                    // Not a marker, or an earlier restart: scan on and decide again.
                    self.unread_marker = Some(self.next_marker()?);
                } else if !is_restart || m == rst(desired + 1) || m == rst(desired + 2) {
                    // Another marker, or one of the next two restarts: leave it unread.
                    break;
                } else {
                    // The expected restart, or one too far off to judge: take it.
                    self.unread_marker = None;
                }
            }
        }
        *next = (*next + 1) & 7;
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Entropy-coded data.

    /// Drops buffered bits: at the start of a scan and at each restart marker.
    pub(super) fn reset_bits(&mut self) {
        self.buf = 0;
        self.nbits = 0;
        self.pad = 0;
        self.overrun = false;
    }

    /// True if bits past the end of the segment's data have been consumed (libjpeg's
    /// `insufficient_data`, which blanks the rest of the restart interval).
    pub(super) fn overran(&self) -> bool {
        self.overrun || self.nbits < self.pad
    }

    /// Loads bytes until at least 57 bits are buffered. After a marker (or at the end of
    /// the data) zeros are loaded, as libjpeg does.
    #[cold]
    fn refill(&mut self) {
        // Common case: the next 8 bytes hold no 0xFF, so the whole bytes that fit go in
        // at once.
        if self.unread_marker.is_none()
            && let Some(chunk) = self.data.get(self.pos..self.pos + 8)
        {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_be_bytes(word);
            let inverted = !x;
            let has_ff =
                inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080
                    != 0;
            if !has_ff {
                let bytes = (64 - self.nbits) / 8;
                let taken = x >> (64 - 8 * bytes);
                self.buf |= taken << (64 - self.nbits - 8 * bytes);
                self.nbits += 8 * bytes;
                self.pos += bytes as usize;
                return;
            }
        }
        while self.nbits <= 56 {
            let byte = self.next_data_byte();
            self.buf |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    fn next_data_byte(&mut self) -> u8 {
        if self.unread_marker.is_none()
            && let Some(&b) = self.data.get(self.pos)
        {
            self.pos += 1;
            if b != 0xFF {
                return b;
            }
            // FF 00 is a data byte 0xFF; FF FF .. 00 too (libjpeg is lenient); any other
            // byte after the fill ends the segment.
            while let Some(&c) = self.data.get(self.pos) {
                self.pos += 1;
                if c == 0 {
                    return 0xFF;
                }
                if c != 0xFF {
                    self.unread_marker = Some(c);
                    return self.padding();
                }
            }
        }
        // No more data in this segment, or in the file.
        if self.unread_marker.is_none() {
            self.exhausted = true;
        }
        self.padding()
    }

    fn padding(&mut self) -> u8 {
        if self.pad > self.nbits {
            // Already consumed into the padding: remember it, and keep `pad` bounded.
            self.overrun = true;
            self.pad = self.nbits;
        }
        self.pad += 8;
        0
    }

    /// Makes at least `n` (≤ 57) bits available.
    #[inline(always)]
    pub(super) fn ensure(&mut self, n: u32) {
        if self.nbits < n {
            self.refill();
        }
    }

    /// The next `n` (1..=16) bits, without checking that they are buffered.
    #[inline(always)]
    pub(super) fn peek(&self, n: u32) -> u32 {
        (self.buf >> (64 - n)) as u32
    }

    #[inline(always)]
    pub(super) fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.nbits -= n;
    }

    /// The next `n` (1..=16) bits as an unsigned number.
    #[inline(always)]
    pub(super) fn bits(&mut self, n: u32) -> u32 {
        self.ensure(n);
        let v = self.peek(n);
        self.consume(n);
        v
    }

    /// The next bit (made available), not consumed.
    #[inline(always)]
    pub(super) fn peek_bit(&mut self) -> u32 {
        self.ensure(1);
        self.peek(1)
    }

    /// Consumes `n` (0 or 1) bits made available by `peek_bit`.
    #[inline(always)]
    pub(super) fn skip_bits(&mut self, n: u32) {
        self.consume(n);
    }

    #[inline(always)]
    pub(super) fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// The next `s` (1..=15) bits as a signed coefficient (JPEG's EXTEND).
    #[inline(always)]
    pub(super) fn receive_extend(&mut self, s: u32) -> i32 {
        super::huffman::extend(self.bits(s) as i32, s)
    }

    /// Decodes one Huffman symbol. A bit pattern that is no code (garbage data) reads as
    /// symbol 0 after 17 bits, as in libjpeg.
    #[inline(always)]
    pub(super) fn decode(&mut self, table: &HuffTable) -> u8 {
        self.ensure(17);
        let entry = table.lookup[self.peek(HuffTable::LOOKAHEAD) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return entry as u8;
        }
        self.decode_long(table)
    }

    #[cold]
    fn decode_long(&mut self, table: &HuffTable) -> u8 {
        let mut len = HuffTable::LOOKAHEAD + 1;
        while len <= 16 {
            let code = self.peek(len) as i32;
            if code <= table.maxcode[len as usize] {
                self.consume(len);
                let index = code + table.valoffset[len as usize];
                return table.symbols[(index & 0xFF) as usize];
            }
            len += 1;
        }
        self.consume(17);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffed_bytes_and_markers() {
        // 0x12, FF 00 (= 0xFF), then a marker: the bits after it read as zeros.
        let data = [0x12, 0xFF, 0x00, 0xFF, 0xFF, 0xD9, 0x34];
        let mut input = Input::new(&data);
        assert_eq!(input.bits(8), 0x12);
        assert_eq!(input.bits(8), 0xFF);
        assert!(!input.overran());
        assert_eq!(input.unread_marker, Some(0xD9));
        assert_eq!(input.bits(4), 0);
        assert!(input.overran());
        assert_eq!(input.read_marker().ok(), Some(0xD9));
    }

    #[test]
    fn next_marker_skips_garbage_and_stuffing() {
        let data = [0x01, 0xFF, 0x00, 0x02, 0xFF, 0xFF, 0xC4, 0x00];
        let mut input = Input::new(&data);
        assert_eq!(input.read_marker().ok(), Some(0xC4));
        assert_eq!(input.pos(), 7);
        let mut input = Input::new(&data[..6]);
        assert!(input.read_marker().is_err());
    }

    #[test]
    fn restart_resynchronisation() {
        // Expected RST2; the stream has RST3 (one ahead): left unread, the segment is empty.
        let mut input = Input::new(&[0xFF, 0xD3]);
        let mut next = 2;
        assert!(input.read_restart_marker(&mut next).is_ok());
        assert_eq!((input.unread_marker, next), (Some(0xD3), 3));
        // Expected RST2; the stream has RST1 (an earlier one), then RST2: skip to it.
        let mut input = Input::new(&[0xFF, 0xD1, 0x55, 0xFF, 0xD2, 0x66]);
        let mut next = 2;
        assert!(input.read_restart_marker(&mut next).is_ok());
        assert_eq!((input.unread_marker, input.pos()), (None, 5));
        // RST6 when RST2 is expected: too far off to judge, taken as the expected one.
        let mut input = Input::new(&[0xFF, 0xD6]);
        let mut next = 2;
        assert!(input.read_restart_marker(&mut next).is_ok());
        assert_eq!(input.unread_marker, None);
    }
}
