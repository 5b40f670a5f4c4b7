//! Huffman decoding tables, and the decoding of one MCU's blocks for each kind of scan
//! (sequential; progressive DC first, DC refinement, AC first, AC refinement), with
//! libjpeg's behaviour on damaged data (see `input.rs`).

use super::input::Input;
use super::tables::{HuffSpec, NATURAL_ORDER};
use super::{Result, corrupt};

pub(super) type Block = [i16; 64];

/// A table ready for decoding (libjpeg's `d_derived_tbl`, with a 9-bit lookahead).
pub(super) struct HuffTable {
    /// For each `LOOKAHEAD`-bit prefix: `(code length << 8) | symbol`, or 0 when the code
    /// is longer than the prefix.
    pub(super) lookup: [u16; 1 << Self::LOOKAHEAD],
    /// The largest code of each length (-1 if none), for longer codes.
    pub(super) maxcode: [i32; 17],
    /// Index of a length's first symbol minus its first code.
    pub(super) valoffset: [i32; 17],
    pub(super) symbols: [u8; 256],
    /// For AC tables, each `LOOKAHEAD`-bit prefix that holds a whole nonzero
    /// coefficient (code and value bits): `value << 8 | run << 4 | total bits`; else 0.
    pub(super) fast_ac: [i32; 1 << Self::LOOKAHEAD],
}

impl HuffTable {
    pub(super) const LOOKAHEAD: u32 = 9;

    /// Builds the decoding table and validates it as libjpeg does: the counts must form a
    /// prefix code with no all-ones code, and DC symbols (bit counts) must be ≤ 15.
    pub(super) fn new(spec: &HuffSpec, is_dc: bool) -> Result<Box<HuffTable>> {
        let bad = || corrupt("a Huffman table is invalid");
        let mut sizes = Vec::with_capacity(256);
        for (i, &count) in spec.counts.iter().enumerate() {
            sizes.extend(std::iter::repeat_n(i as u32 + 1, usize::from(count)));
        }
        if sizes.len() > 256 || sizes.len() > spec.symbols.len() {
            return Err(bad());
        }
        // Canonical codes (Figure C.2), checking that each length's codes fit.
        let mut codes = Vec::with_capacity(sizes.len());
        let mut code = 0u32;
        let mut len = sizes.first().copied().unwrap_or(1);
        let mut p = 0;
        while p < sizes.len() {
            while p < sizes.len() && sizes[p] == len {
                codes.push(code);
                code += 1;
                p += 1;
            }
            if code >= 1 << len {
                return Err(bad());
            }
            code <<= 1;
            len += 1;
        }
        let mut table = Box::new(HuffTable {
            lookup: [0; 1 << Self::LOOKAHEAD],
            maxcode: [-1; 17],
            valoffset: [0; 17],
            symbols: [0; 256],
            fast_ac: [0; 1 << Self::LOOKAHEAD],
        });
        table.symbols[..sizes.len()].copy_from_slice(&spec.symbols[..sizes.len()]);
        let mut p = 0usize;
        for l in 1..=16usize {
            let count = usize::from(spec.counts[l - 1]);
            if count > 0 {
                table.valoffset[l] = p as i32 - codes[p] as i32;
                p += count;
                table.maxcode[l] = codes[p - 1] as i32;
            }
        }
        for (p, (&size, &code)) in sizes.iter().zip(&codes).enumerate() {
            if size > Self::LOOKAHEAD {
                break;
            }
            let shift = Self::LOOKAHEAD - size;
            let first = (code << shift) as usize;
            let entry = ((size as u16) << 8) | u16::from(table.symbols[p]);
            table.lookup[first..first + (1 << shift)].fill(entry);
        }
        if is_dc && table.symbols[..sizes.len()].iter().any(|&s| s > 15) {
            return Err(bad());
        }
        if !is_dc {
            for look in 0..1u32 << Self::LOOKAHEAD {
                let entry = table.lookup[look as usize];
                let (len, symbol) = (u32::from(entry >> 8), u32::from(entry & 0xFF));
                let (run, size) = (symbol >> 4, symbol & 15);
                if entry == 0 || size == 0 || len + size > Self::LOOKAHEAD {
                    continue;
                }
                let bits = (look >> (Self::LOOKAHEAD - len - size)) & ((1 << size) - 1);
                let value = extend(bits as i32, size);
                table.fast_ac[look as usize] =
                    (value << 8) | (run << 4) as i32 | (len + size) as i32;
            }
        }
        Ok(table)
    }
}

/// JPEG's EXTEND: `size` bits as a signed coefficient.
#[inline(always)]
pub(super) fn extend(v: i32, size: u32) -> i32 {
    if v < (1 << (size - 1)) {
        v + (-1 << size) + 1
    } else {
        v
    }
}

/// Entropy decoder state carried from MCU to MCU within a scan.
pub(super) struct EntropyState {
    /// DC predictions, per component of the scan.
    pub(super) dc_pred: [i32; 4],
    /// Remaining end-of-band run (progressive AC scans).
    pub(super) eobrun: u32,
    /// The segment's data ran out: the rest of the restart interval is left blank.
    pub(super) insufficient: bool,
}

impl EntropyState {
    pub(super) fn new() -> Self {
        EntropyState {
            dc_pred: [0; 4],
            eobrun: 0,
            insufficient: false,
        }
    }
}

/// Sequential scans: one block's DC difference and AC coefficients, stored into a block
/// that holds zeros or earlier values (only nonzero AC values are written).
#[inline]
pub(super) fn decode_block_sequential(
    input: &mut Input,
    dc: &HuffTable,
    ac: &HuffTable,
    pred: &mut i32,
    block: &mut Block,
) {
    let s = u32::from(input.decode(dc));
    let diff = if s != 0 { input.receive_extend(s) } else { 0 };
    // libjpeg lets the prediction wrap (it only happens with malformed data).
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        input.ensure(32);
        let fast = ac.fast_ac[input.peek(HuffTable::LOOKAHEAD) as usize];
        if fast != 0 {
            input.consume((fast & 15) as u32);
            k += ((fast >> 4) & 15) as usize;
            block[NATURAL_ORDER[k]] = (fast >> 8) as i16;
            k += 1;
            continue;
        }
        let rs = input.decode(ac);
        let r = usize::from(rs >> 4);
        let s = u32::from(rs & 15);
        if s != 0 {
            k += r;
            block[NATURAL_ORDER[k]] = input.receive_extend(s) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            break;
        }
        k += 1;
    }
}

/// Progressive DC first scan: one block's DC value, shifted by the point transform.
/// libjpeg refuses a prediction that overflows (`JERR_BAD_DCT_COEF`).
pub(super) fn decode_dc_first(
    input: &mut Input,
    dc: &HuffTable,
    pred: &mut i32,
    al: u8,
    block: &mut Block,
) -> Result<()> {
    let s = u32::from(input.decode(dc));
    let diff = if s != 0 { input.receive_extend(s) } else { 0 };
    *pred = pred
        .checked_add(diff)
        .ok_or_else(|| corrupt("a DC coefficient is out of range"))?;
    block[0] = pred.wrapping_shl(u32::from(al)) as i16;
    Ok(())
}

/// Progressive DC refinement: one more bit of the DC value.
pub(super) fn decode_dc_refine(input: &mut Input, al: u8, block: &mut Block) {
    if input.bit() {
        block[0] |= (1i32 << al) as i16;
    }
}

/// Progressive AC first scan over the band `ss..=se` of one block.
pub(super) fn decode_ac_first(
    input: &mut Input,
    ac: &HuffTable,
    eobrun: &mut u32,
    (ss, se, al): (u8, u8, u8),
    block: &mut Block,
) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let (se, mut k) = (usize::from(se), usize::from(ss));
    while k <= se {
        let rs = input.decode(ac);
        let r = u32::from(rs >> 4);
        let s = u32::from(rs & 15);
        if s != 0 {
            k += r as usize;
            let v = input.receive_extend(s);
            block[NATURAL_ORDER[k]] = v.wrapping_shl(u32::from(al)) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = 1 << r;
            if r != 0 {
                *eobrun += input.bits(r);
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
}

/// Progressive AC refinement over the band `ss..=se` of one block: correction bits for
/// nonzero coefficients and newly nonzero ones of magnitude `1 << al`.
pub(super) fn decode_ac_refine(
    input: &mut Input,
    ac: &HuffTable,
    eobrun: &mut u32,
    (ss, se, al): (u8, u8, u8),
    block: &mut Block,
) {
    let p1 = (1i32 << al) as i16;
    let m1 = (-1i32 << al) as i16;
    let se = usize::from(se);
    let mut k = usize::from(ss);
    if *eobrun == 0 {
        while k <= se {
            let rs = input.decode(ac);
            let mut r = i32::from(rs >> 4);
            let s = rs & 15;
            let mut value = 0i16;
            if s != 0 {
                // The size of a new coefficient is always 1 (libjpeg only warns otherwise).
                value = if input.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r != 0 {
                    *eobrun += input.bits(r as u32);
                }
                break;
            }
            // Skip r zero coefficients (correcting the nonzero ones passed over), and stop
            // at the zero coefficient that becomes `value`.
            loop {
                let coef = &mut block[NATURAL_ORDER[k]];
                let zero = *coef == 0;
                correct(input, coef, p1);
                r -= i32::from(zero);
                if r < 0 {
                    break;
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if value != 0 {
                block[NATURAL_ORDER[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        // In an end-of-band run: only correction bits for the nonzero coefficients.
        for &pos in NATURAL_ORDER.get(k..=se).unwrap_or(&[]) {
            correct(input, &mut block[pos], p1);
        }
        *eobrun -= 1;
    }
}

/// A correction bit for a coefficient if it is nonzero (none is read for a zero one): 1
/// means its magnitude grows by `p1`, unless that bit is already set. Branch-free: which
/// coefficients are nonzero is as unpredictable as the bits.
#[inline(always)]
fn correct(input: &mut Input, coef: &mut i16, p1: i16) {
    let nonzero = u32::from(*coef != 0);
    let bit = input.peek_bit() & nonzero;
    input.skip_bits(nonzero);
    let grow = bit != 0 && (*coef & p1) == 0;
    let step = if *coef >= 0 { p1 } else { p1.wrapping_neg() };
    *coef = coef.wrapping_add(step * i16::from(grow));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_reject_what_libjpeg_rejects() {
        // Three codes of length 1: not a prefix code.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        let spec = HuffSpec {
            counts,
            symbols: vec![0, 1, 2],
        };
        assert!(HuffTable::new(&spec, false).is_err());
        // Two codes of length 1 use the all-ones code "1": refused too.
        counts[0] = 2;
        let spec = HuffSpec {
            counts,
            symbols: vec![0, 1],
        };
        assert!(HuffTable::new(&spec, false).is_err());
        // A DC symbol above 15.
        counts[0] = 0;
        counts[1] = 1;
        let spec = HuffSpec {
            counts,
            symbols: vec![16],
        };
        assert!(HuffTable::new(&spec, true).is_err());
        assert!(HuffTable::new(&spec, false).is_ok());
    }

    #[test]
    fn decodes_standard_codes() {
        let table = HuffTable::new(&HuffSpec::standard_dc(0), true).unwrap();
        // Luminance DC: category 0 is "00", 1 is "010", 11 is "111111110".
        let data = [0b0001_0111, 0b1111_1000, 0x00, 0x00];
        let mut input = Input::new(&data);
        assert_eq!(input.decode(&table), 0);
        assert_eq!(input.decode(&table), 1);
        assert_eq!(input.decode(&table), 11);
        let ac = HuffTable::new(&HuffSpec::standard_ac(0), false).unwrap();
        // The luminance AC table's 125 sixteen-bit codes run from 0xFF82 (symbol index 37).
        for (i, &sym) in HuffSpec::standard_ac(0).symbols.iter().enumerate().skip(37) {
            let code = (0xFF82u32 + (i as u32 - 37)) << 16;
            let bytes = code.to_be_bytes();
            let stuffed: Vec<u8> = bytes
                .iter()
                .flat_map(|&b| if b == 0xFF { vec![0xFF, 0x00] } else { vec![b] })
                .collect();
            let mut input = Input::new(&stuffed);
            assert_eq!(input.decode(&ac), sym, "{i}");
        }
    }
}
