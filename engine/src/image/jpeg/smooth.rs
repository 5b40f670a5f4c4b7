//! libjpeg's block smoothing for progressive JPEGs whose low-frequency AC coefficients
//! are not fully known (jdcoefct.c, `smoothing_ok` and `decompress_smooth_data`; PIL
//! leaves `do_block_smoothing` on). A file whose scans refine every coefficient to the
//! last bit (what encoders write) is never smoothed; one that stops early (DC only, or AC
//! bands or bits never sent) gets estimates for the missing low-frequency coefficients
//! from the DC values of the 5×5 neighbouring blocks. The arithmetic, including its
//! quirks at the image's last block rows, is libjpeg-turbo's, so such files decode to
//! PIL's pixels too.

use super::huffman::Block;

/// The coefficients smoothing estimates: positions in zigzag order 1..=9.
pub(super) const SAVED_COEFS: usize = 10;

/// Per-component progression state latched at the output pass (libjpeg's
/// `coef_bits_latch`): how many low bits of each of the first coefficients are still
/// unknown (0: exact, -1: never sent).
pub(super) type CoefBits = [i32; SAVED_COEFS];

// Natural-order positions of the estimated coefficients (Qrc: row r, column c).
const Q01: usize = 1;
const Q10: usize = 8;
const Q20: usize = 16;
const Q11: usize = 9;
const Q02: usize = 2;
const Q03: usize = 3;
const Q12: usize = 10;
const Q21: usize = 17;
const Q30: usize = 24;

/// libjpeg's `smoothing_ok`: per component, (current, previous scan's) latched
/// progression state, or None when smoothing is off: not progressive, a component
/// never scanned or without DC, a zero quantiser among the first ten, or every one of
/// the first nine AC coefficients exact in every component.
pub(super) fn smoothing_latch(
    coef_bits: &[[i32; 64]],
    prev_coef_bits: &[[i32; 64]],
    quant: &[Option<[u16; 64]>],
    scans: u32,
) -> Option<Vec<(CoefBits, CoefBits)>> {
    let mut useful = false;
    let mut latch = Vec::with_capacity(coef_bits.len());
    for ((bits, prev), q) in coef_bits.iter().zip(prev_coef_bits).zip(quant) {
        let q = (*q)?;
        if [0, Q01, Q10, Q20, Q11, Q02, Q03, Q12, Q21, Q30]
            .iter()
            .any(|&i| q[i] == 0)
        {
            return None;
        }
        if bits[0] < 0 {
            return None;
        }
        let mut cur = [0; SAVED_COEFS];
        let mut before = [0; SAVED_COEFS];
        cur[0] = bits[0];
        for i in 1..SAVED_COEFS {
            before[i] = if scans > 1 { prev[i] } else { -1 };
            cur[i] = bits[i];
            useful |= bits[i] != 0;
        }
        latch.push((cur, before));
    }
    useful.then_some(latch)
}

/// One component's blocks (the MCU-padded grid) and geometry.
pub(super) struct SmoothPlane<'a> {
    pub(super) blocks: &'a [Block],
    /// Blocks per row of `blocks`.
    pub(super) stride: usize,
    pub(super) width_in_blocks: usize,
    pub(super) height_in_blocks: usize,
    pub(super) v_samp: usize,
    pub(super) total_imcu_rows: usize,
    pub(super) quant: &'a [u16; 64],
}

/// Calls `emit(block_row, block_col, coefficients)` for every block of iMCU row `imcu`
/// with the coefficients smoothing gives it. `bits` is the latched state to use (libjpeg
/// uses the previous scan's for rows past the last one decoded without running out of
/// data).
pub(super) fn smooth_imcu_row(
    p: &SmoothPlane,
    imcu: usize,
    bits: &CoefBits,
    mut emit: impl FnMut(usize, usize, &Block),
) {
    let last_imcu = p.total_imcu_rows - 1;
    // libjpeg counts the last iMCU row's real block rows, and with that count (not the
    // sampling factor) forms the "image block row" numbers that decide which neighbours
    // exist: a quirk for components whose height in blocks is not a multiple of v.
    let block_rows = if imcu < last_imcu {
        p.v_samp
    } else {
        match p.height_in_blocks % p.v_samp {
            0 => p.v_samp,
            n => n,
        }
    };
    let image_block_rows = block_rows * p.total_imcu_rows;
    let change_dc = bits[1..].iter().all(|&b| b == -1);
    let q = |i: usize| i64::from(p.quant[i]);
    let q00 = q(0);
    let dc_at = |row: usize, col: usize| i64::from(p.blocks[row * p.stride + col][0]);
    let last_col = p.width_in_blocks - 1;

    for block_row in 0..block_rows {
        let image_row = imcu * block_rows + block_row;
        let cur = imcu * p.v_samp + block_row;
        let prev = if image_row > 0 { cur - 1 } else { cur };
        let prev2 = if image_row > 1 { cur - 2 } else { prev };
        let next = if image_row + 1 < image_block_rows {
            cur + 1
        } else {
            cur
        };
        let next2 = if image_row + 2 < image_block_rows {
            cur + 2
        } else {
            next
        };
        let rows = [prev2, prev, cur, next, next2];
        // dc[r][c]: DC of the block in rows[r], column (current - 2 + c); libjpeg's
        // DC01..DC25 row by row. Columns past the edges repeat the edge.
        let mut dc = [[0i64; 5]; 5];
        for (r, &row) in rows.iter().enumerate() {
            dc[r] = [dc_at(row, 0); 5];
        }
        for col in 0..p.width_in_blocks {
            let mut ws = p.blocks[cur * p.stride + col];
            if col == 0 && col < last_col {
                for (r, &row) in rows.iter().enumerate() {
                    dc[r][3] = dc_at(row, 1);
                    dc[r][4] = dc_at(row, 1);
                }
            }
            if col + 1 < last_col {
                for (r, &row) in rows.iter().enumerate() {
                    dc[r][4] = dc_at(row, col + 2);
                }
            }
            estimate(&mut ws, &dc, bits, change_dc, q00, &q);
            emit(cur, col, &ws);
            for r in &mut dc {
                r.copy_within(1.., 0);
            }
        }
    }
}

/// libjpeg's prediction of a coefficient from `num` (Q00 times a DC combination) and
/// its quantiser `qk`, limited to what the unknown `al` low bits can hold.
fn predict(num: i64, qk: i64, al: Option<i32>) -> i16 {
    let clamp = |pred: i64| match al {
        Some(al) if al > 0 && pred >= 1 << al => (1 << al) - 1,
        _ => pred,
    };
    let pred = if num >= 0 {
        clamp(((qk << 7) + num) / (qk << 8))
    } else {
        -clamp(((qk << 7) - num) / (qk << 8))
    };
    pred as i32 as i16
}

fn estimate(
    ws: &mut Block,
    dc: &[[i64; 5]; 5],
    bits: &CoefBits,
    change_dc: bool,
    q00: i64,
    q: &impl Fn(usize) -> i64,
) {
    // d(n) is libjpeg's DCn, n = 1..=25.
    let d = |n: usize| dc[(n - 1) / 5][(n - 1) % 5];
    let mut set = |pos: usize, zz: usize, qpos: usize, combo: i64| {
        let al = bits[zz];
        if al != 0 && ws[pos] == 0 {
            ws[pos] = predict(q00 * combo, q(qpos), Some(al));
        }
    };
    // AC01
    set(
        1,
        1,
        Q01,
        if change_dc {
            -d(1) - d(2) + d(4) + d(5) - 3 * d(6) + 13 * d(7) - 13 * d(9) + 3 * d(10) - 3 * d(11)
                + 38 * d(12)
                - 38 * d(14)
                + 3 * d(15)
                - 3 * d(16)
                + 13 * d(17)
                - 13 * d(19)
                + 3 * d(20)
                - d(21)
                - d(22)
                + d(24)
                + d(25)
        } else {
            -7 * d(11) + 50 * d(12) - 50 * d(14) + 7 * d(15)
        },
    );
    // AC10
    set(
        8,
        2,
        Q10,
        if change_dc {
            -d(1) - 3 * d(2) - 3 * d(3) - 3 * d(4) - d(5) - d(6) + 13 * d(7) + 38 * d(8) + 13 * d(9)
                - d(10)
                + d(16)
                - 13 * d(17)
                - 38 * d(18)
                - 13 * d(19)
                + d(20)
                + d(21)
                + 3 * d(22)
                + 3 * d(23)
                + 3 * d(24)
                + d(25)
        } else {
            -7 * d(3) + 50 * d(8) - 50 * d(18) + 7 * d(23)
        },
    );
    // AC20
    set(
        16,
        3,
        Q20,
        if change_dc {
            d(3) + 2 * d(7) + 7 * d(8) + 2 * d(9) - 5 * d(12) - 14 * d(13) - 5 * d(14)
                + 2 * d(17)
                + 7 * d(18)
                + 2 * d(19)
                + d(23)
        } else {
            -d(3) + 13 * d(8) - 24 * d(13) + 13 * d(18) - d(23)
        },
    );
    // AC11
    set(
        9,
        4,
        Q11,
        if change_dc {
            -d(1) + d(5) + 9 * d(7) - 9 * d(9) - 9 * d(17) + 9 * d(19) + d(21) - d(25)
        } else {
            d(10) + d(16) - 10 * d(17) + 10 * d(19) - d(2) - d(20) + d(22) - d(24) + d(4) - d(6)
                + 10 * d(7)
                - 10 * d(9)
        },
    );
    // AC02
    set(
        2,
        5,
        Q02,
        if change_dc {
            2 * d(7) - 5 * d(8) + 2 * d(9) + d(11) + 7 * d(12) - 14 * d(13)
                + 7 * d(14)
                + d(15)
                + 2 * d(17)
                - 5 * d(18)
                + 2 * d(19)
        } else {
            -d(11) + 13 * d(12) - 24 * d(13) + 13 * d(14) - d(15)
        },
    );
    if change_dc {
        set(
            3,
            6,
            Q03,
            d(7) - d(9) + 2 * d(12) - 2 * d(14) + d(17) - d(19),
        );
        set(
            10,
            7,
            Q12,
            d(7) - 3 * d(8) + d(9) - d(17) + 3 * d(18) - d(19),
        );
        set(
            17,
            8,
            Q21,
            d(7) - d(9) - 3 * d(12) + 3 * d(14) + d(17) - d(19),
        );
        set(
            24,
            9,
            Q30,
            d(7) + 2 * d(8) + d(9) - d(17) - 2 * d(18) - d(19),
        );
        // The DC itself, smoothed (its known bits are not protected: libjpeg replaces it).
        let combo = -2 * d(1) - 6 * d(2) - 8 * d(3) - 6 * d(4) - 2 * d(5) - 6 * d(6)
            + 6 * d(7)
            + 42 * d(8)
            + 6 * d(9)
            - 6 * d(10)
            - 8 * d(11)
            + 42 * d(12)
            + 152 * d(13)
            + 42 * d(14)
            - 8 * d(15)
            - 6 * d(16)
            + 6 * d(17)
            + 42 * d(18)
            + 6 * d(19)
            - 6 * d(20)
            - 2 * d(21)
            - 6 * d(22)
            - 8 * d(23)
            - 6 * d(24)
            - 2 * d(25);
        ws[0] = predict(q00 * combo, q00, None);
    }
}
