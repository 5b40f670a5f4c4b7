//! From decoded component samples to PIL's RGB: libjpeg-turbo's chroma upsampling
//! (jdsample.c, "fancy" triangle filters where libjpeg uses them), its colour conversion
//! (jdcolor.c), and for CMYK PIL's own inversion and `convert("RGB")` formula.
//!
//! PIL leaves libjpeg's `do_fancy_upsampling` on, so libjpeg never takes the merged
//! upsampling + colour conversion path (jdmerge.c, other rounding): `use_merged_upsample`
//! refuses when fancy upsampling is on.

use super::{ColorSpace, Result, unsupported};

/// How a component is brought to full resolution, chosen as libjpeg's `jinit_upsampler`
/// chooses (by the ratio of the component's sampling factors to the largest ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Upsample {
    /// Already full size.
    Full,
    /// Twice as wide: triangle filter across each row (3/4 nearer + 1/4 further sample).
    H2V1,
    /// Twice as tall: triangle filter down each column.
    H1V2,
    /// Twice as wide and tall: triangle filter in both directions.
    H2V2,
    /// Any other integral ratio: samples replicated (also 2×1 and 2×2 for components at
    /// most 2 samples wide, where libjpeg does not use the triangle filter).
    Replicate { h: usize, v: usize },
}

impl Upsample {
    pub(super) fn choose(
        (h, v): (usize, usize),
        (max_h, max_v): (usize, usize),
        downsampled_width: usize,
    ) -> Result<Upsample> {
        Ok(if h == max_h && v == max_v {
            Upsample::Full
        } else if h * 2 == max_h && v == max_v {
            if downsampled_width > 2 {
                Upsample::H2V1
            } else {
                Upsample::Replicate { h: 2, v: 1 }
            }
        } else if h == max_h && v * 2 == max_v {
            Upsample::H1V2
        } else if h * 2 == max_h && v * 2 == max_v {
            if downsampled_width > 2 {
                Upsample::H2V2
            } else {
                Upsample::Replicate { h: 2, v: 2 }
            }
        } else if max_h % h == 0 && max_v % v == 0 {
            Upsample::Replicate {
                h: max_h / h,
                v: max_v / v,
            }
        } else {
            // libjpeg: JERR_FRACT_SAMPLE_NOTIMPL (PIL fails too).
            return Err(unsupported(format!(
                "JPEG sampling factors {h}x{v} of {max_h}x{max_v} are not integral ratios"
            )));
        })
    }
}

/// Rows of one component's samples, `width` valid samples each; `row(y)` for any row of
/// the component (edge rows are replicated beyond `height`, as libjpeg's context rows
/// do).
pub(super) trait Rows {
    fn row(&self, y: usize) -> &[u8];
}

/// Upsamples output row `y` of a component whose samples are `width` × `height`, into
/// `out` (at least the output width; up to twice `width` is written).
pub(super) fn upsample_row(
    method: Upsample,
    rows: &impl Rows,
    (width, height): (usize, usize),
    y: usize,
    out: &mut [u8],
) {
    let last = height - 1;
    // The nearer row and the further one (above for an even output row, below for an odd
    // one) of the vertical triangle filter, clamped to the image.
    let pair = || {
        let near = y / 2;
        let far = if y.is_multiple_of(2) {
            near.saturating_sub(1)
        } else {
            (near + 1).min(last)
        };
        (rows.row(near.min(last)), rows.row(far))
    };
    match method {
        Upsample::Full => out[..width].copy_from_slice(&rows.row(y)[..width]),
        Upsample::H2V1 => {
            let row = &rows.row(y)[..width];
            out[0] = row[0];
            out[1] = ((u32::from(row[0]) * 3 + u32::from(row[1]) + 2) >> 2) as u8;
            for i in 1..width - 1 {
                let c = u32::from(row[i]) * 3;
                out[2 * i] = ((c + u32::from(row[i - 1]) + 1) >> 2) as u8;
                out[2 * i + 1] = ((c + u32::from(row[i + 1]) + 2) >> 2) as u8;
            }
            let i = width - 1;
            out[2 * i] = ((u32::from(row[i]) * 3 + u32::from(row[i - 1]) + 1) >> 2) as u8;
            out[2 * i + 1] = row[i];
        }
        Upsample::H1V2 => {
            let (near, far) = pair();
            let bias = if y.is_multiple_of(2) { 1 } else { 2 };
            for ((o, &n), &f) in out[..width].iter_mut().zip(near).zip(far) {
                *o = ((u32::from(n) * 3 + u32::from(f) + bias) >> 2) as u8;
            }
        }
        Upsample::H2V2 => {
            let (near, far) = pair();
            let sum = |i: usize| u32::from(near[i]) * 3 + u32::from(far[i]);
            let mut this = sum(0);
            let mut next = sum(1);
            let mut last_sum;
            out[0] = ((this * 4 + 8) >> 4) as u8;
            out[1] = ((this * 3 + next + 7) >> 4) as u8;
            for i in 1..width - 1 {
                (last_sum, this) = (this, next);
                next = sum(i + 1);
                out[2 * i] = ((this * 3 + last_sum + 8) >> 4) as u8;
                out[2 * i + 1] = ((this * 3 + next + 7) >> 4) as u8;
            }
            let i = width - 1;
            (last_sum, this) = (this, next);
            out[2 * i] = ((this * 3 + last_sum + 8) >> 4) as u8;
            out[2 * i + 1] = ((this * 4 + 7) >> 4) as u8;
        }
        Upsample::Replicate { h, v } => {
            let row = rows.row(y / v);
            for (i, chunk) in out.chunks_mut(h).take(width).enumerate() {
                chunk.fill(row[i]);
            }
        }
    }
}

/// libjpeg's YCbCr → RGB tables (jdcolor.c, `build_ycc_rgb_table`): 16-bit fixed point,
/// rounded per term for R and B, once for G.
pub(super) struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    pub(super) fn new() -> Self {
        const ONE_HALF: i32 = 1 << 15;
        let fix = |x: f64| (x * 65536.0 + 0.5) as i32;
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (fix(1.40200) * x + ONE_HALF) >> 16;
            t.cb_b[i] = (fix(1.77200) * x + ONE_HALF) >> 16;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    /// (R, G, B) before clamping, as offsets added to Y.
    #[inline(always)]
    fn offsets(&self, cb: u8, cr: u8) -> (i32, i32, i32) {
        let (cb, cr) = (usize::from(cb), usize::from(cr));
        (
            self.cr_r[cr],
            (self.cb_g[cb] + self.cr_g[cr]) >> 16,
            self.cb_b[cb],
        )
    }
}

#[inline(always)]
fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// PIL's CMYK → RGB (Convert.c `cmyk2rgb`) on PIL's CMYK, which is libjpeg's output
/// inverted (PIL reads JPEG CMYK as "CMYK;I", assuming Adobe's inverted convention).
#[inline(always)]
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8, out: &mut [u8]) {
    // PIL: nk = 255 - K_pil, and K_pil = 255 - k.
    let nk = i32::from(k);
    let channel = |v: u8| {
        let t = (255 - i32::from(v)) * nk + 128;
        let mul = ((t >> 8) + t) >> 8;
        clamp(nk - mul)
    };
    out[0] = channel(c);
    out[1] = channel(m);
    out[2] = channel(y);
}

/// Converts one row of upsampled components to RGB.
pub(super) fn convert_row(color: ColorSpace, tables: &YccTables, comps: &[&[u8]], out: &mut [u8]) {
    match (color, comps) {
        (ColorSpace::Grey, [g, ..]) => {
            for (px, &v) in out.chunks_exact_mut(3).zip(g.iter()) {
                px.fill(v);
            }
        }
        (ColorSpace::YCbCr, [y, cb, cr, ..]) => {
            for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(*y).zip(*cb).zip(*cr) {
                let (r, g, b) = tables.offsets(cb, cr);
                let y = i32::from(y);
                px[0] = clamp(y + r);
                px[1] = clamp(y + g);
                px[2] = clamp(y + b);
            }
        }
        (ColorSpace::Rgb, [r, g, b, ..]) => {
            for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(*r).zip(*g).zip(*b) {
                px.copy_from_slice(&[r, g, b]);
            }
        }
        (ColorSpace::Cmyk, [c, m, y, k, ..]) => {
            let pixels = out.chunks_exact_mut(3).zip(*c).zip(*m).zip(*y).zip(*k);
            for ((((px, &c), &m), &y), &k) in pixels {
                cmyk_to_rgb(c, m, y, k, px);
            }
        }
        (ColorSpace::Ycck, [y, cb, cr, k, ..]) => {
            // libjpeg's YCCK → CMYK (ycck_cmyk_convert): YCbCr → RGB, inverted.
            let pixels = out.chunks_exact_mut(3).zip(*y).zip(*cb).zip(*cr).zip(*k);
            for ((((px, &y), &cb), &cr), &k) in pixels {
                let (r, g, b) = tables.offsets(cb, cr);
                let y = i32::from(y);
                let c = clamp(255 - (y + r));
                let m = clamp(255 - (y + g));
                let yy = clamp(255 - (y + b));
                cmyk_to_rgb(c, m, yy, k, px);
            }
        }
        // The component count always matches the colour space (checked at the header).
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plane(Vec<Vec<u8>>);
    impl Rows for Plane {
        fn row(&self, y: usize) -> &[u8] {
            &self.0[y]
        }
    }

    #[test]
    fn libjpeg_table_values() {
        let t = YccTables::new();
        assert_eq!((t.cr_r[0], t.cr_r[255]), (-179, 178));
        assert_eq!((t.cb_b[0], t.cb_b[255]), (-227, 225));
        assert_eq!(t.cr_g[129], -46802);
        assert_eq!(t.cb_g[129], -22554 + 32768);
    }

    #[test]
    fn fancy_upsampling_rounding() {
        let plane = Plane(vec![vec![10, 20, 40], vec![100, 0, 50]]);
        let mut out = [0u8; 6];
        upsample_row(Upsample::H2V1, &plane, (3, 2), 0, &mut out);
        assert_eq!(out, [10, 13, 17, 25, 35, 40]);
        // Row 1 of H2V2: nearer row 0, further row 1; row 0: further row "-1" = row 0.
        for (y, s) in [(1, [130u32, 60, 170]), (0, [40, 80, 160])] {
            upsample_row(Upsample::H2V2, &plane, (3, 2), y, &mut out);
            let expected = [
                (s[0] * 4 + 8) >> 4,
                (s[0] * 3 + s[1] + 7) >> 4,
                (s[1] * 3 + s[0] + 8) >> 4,
                (s[1] * 3 + s[2] + 7) >> 4,
                (s[2] * 3 + s[1] + 8) >> 4,
                (s[2] * 4 + 7) >> 4,
            ];
            assert_eq!(out.map(u32::from), expected);
        }
        assert!(Upsample::choose((3, 1), (2, 1), 8).is_err());
        assert_eq!(
            Upsample::choose((1, 1), (4, 1), 8).ok(),
            Some(Upsample::Replicate { h: 4, v: 1 })
        );
    }

    #[test]
    fn cmyk_follows_pil() {
        let mut px = [0u8; 3];
        // libjpeg's (0, 0, 0, 255) is PIL's CMYK (255, 255, 255, 0): full ink, black.
        cmyk_to_rgb(0, 0, 0, 255, &mut px);
        assert_eq!(px, [0, 0, 0]);
        cmyk_to_rgb(255, 255, 255, 255, &mut px);
        assert_eq!(px, [255, 255, 255]);
        cmyk_to_rgb(255, 255, 255, 0, &mut px);
        assert_eq!(px, [0, 0, 0]);
    }
}
