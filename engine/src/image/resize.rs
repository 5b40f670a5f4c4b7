//! Bicubic resampling with the arithmetic of Pillow's `ImagingResample`
//! (`src/libImaging/Resample.c`), so that results are bit-identical to
//! `PIL.Image.resize(size, Image.BICUBIC)` on RGB uint8 images.
//!
//! What has to match, and why it is written the way it is:
//! - Pillow resamples separably, one axis after the other, into a uint8 intermediate. The
//!   intermediate is clipped to 0..=255 and rounded, so the order of the passes matters.
//!   Pillow 13 (the oracle's version) runs the vertical pass first when the height shrinks
//!   by more than twice as many pixels as the width (`in_h - out_h > 2 * (in_w - out_w)`,
//!   and `in_h > out_h`), the horizontal pass first otherwise. Pillow ≤ 12 always ran the
//!   horizontal pass first: results of the two versions differ by a level or so in some
//!   pixels of such resizes (never for square images, so never after `expand2square`).
//! - Each output pixel `xx` has a filter centred at `(xx + 0.5) * scale` in input pixels; when
//!   downscaling the kernel is stretched by the scale (antialiasing), so its support is
//!   `2 * max(scale, 1)` pixels on each side.
//! - The weights are computed in f64 exactly as Pillow computes them (same expressions, same
//!   order, so the same rounding), normalised to sum 1, then turned into fixed point with
//!   22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`) by rounding half away from zero.
//! - The accumulators are i32 starting at one half (`1 << 21`); the result is the
//!   accumulator shifted right by 22 (arithmetic shift) and clamped to 0..=255.
//! - A pass is skipped when its dimension does not change (Pillow copies the image then).

use std::ops::Range;

use rayon::prelude::*;

use super::RgbImage;

/// Fractional bits of the fixed-point weights (Pillow: 8 bits for the result, 2 for
/// overflow of negative lobes and sums over 1).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Half of the support of Pillow's bicubic filter (it is non-zero on (-2, 2)).
const BICUBIC_SUPPORT: f64 = 2.0;

/// A rectangle of the output image to compute, in output pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Resizes `img` to `width × height` with Pillow's bicubic filter (a = -0.5, antialiased
/// when downscaling), bit-identical to `PIL.Image.resize((width, height), Image.BICUBIC)`
/// on an RGB image (Pillow 13; see the module docs for older versions). An empty input
/// gives a black image of the requested size.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let all = Window {
        x: 0,
        y: 0,
        width,
        height,
    };
    resize_bicubic_window(img, width, height, all)
}

/// The part `window` of `resize_bicubic(img, width, height)`, computed without the rest of
/// the output: every output pixel depends only on its own filter taps, so a crop of the
/// full resize and the resize of just that crop are the same bytes. This keeps a
/// shortest-edge resize of a very long image followed by a centre crop from ever
/// allocating the full, uncropped, resized image.
pub(crate) fn resize_bicubic_window(
    img: &RgbImage,
    width: u32,
    height: u32,
    window: Window,
) -> RgbImage {
    debug_assert!(window.x + window.width <= width && window.y + window.height <= height);
    let (in_w, in_h) = (img.width as usize, img.height as usize);
    if window.width == 0 || window.height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::filled(window.width, window.height, [0, 0, 0]);
    }
    let out_cols = window.x as usize..(window.x + window.width) as usize;
    let out_rows = window.y as usize..(window.y + window.height) as usize;
    // Pillow skips a pass whose dimension is unchanged (`need_horizontal`/`need_vertical`
    // with the default box).
    let horizontal =
        (width as usize != in_w).then(|| Taps::new(in_w, width as usize, out_cols.clone()));
    let vertical =
        (height as usize != in_h).then(|| Taps::new(in_h, height as usize, out_rows.clone()));
    let src = Plane {
        data: &img.data,
        width: in_w,
        x0: 0,
        y0: 0,
    };
    let data = match (horizontal, vertical) {
        (None, None) => src.copy(out_cols, out_rows),
        (Some(h), None) => resample_horizontal(&src, out_rows, &h),
        (None, Some(v)) => resample_vertical(&src, out_cols, &v),
        (Some(h), Some(v)) if vertical_first(img, width, height) => {
            // Only the input columns the horizontal taps read.
            let cols = h.span();
            let tmp = resample_vertical(&src, cols.clone(), &v);
            let tmp = Plane {
                data: &tmp,
                width: cols.len(),
                x0: cols.start,
                y0: out_rows.start,
            };
            resample_horizontal(&tmp, out_rows, &h)
        }
        (Some(h), Some(v)) => {
            // Only the input rows the vertical taps read (Pillow's `ybox_first..ybox_last`).
            let rows = v.span();
            let tmp = resample_horizontal(&src, rows.clone(), &h);
            let tmp = Plane {
                data: &tmp,
                width: out_cols.len(),
                x0: out_cols.start,
                y0: rows.start,
            };
            resample_vertical(&tmp, out_cols, &v)
        }
    };
    RgbImage {
        width: window.width,
        height: window.height,
        data,
    }
}

/// Pillow 13's pass order: vertical first when the height shrinks by more than twice as
/// many pixels as the width (`ImagingResampleInner`'s `horizontal_first`).
fn vertical_first(img: &RgbImage, width: u32, height: u32) -> bool {
    let shrink_h = i64::from(img.height) - i64::from(height);
    let shrink_w = i64::from(img.width) - i64::from(width);
    shrink_h > 0 && shrink_h > shrink_w * 2
}

/// A block of RGB pixels: `data` holds rows of `width` pixels whose top-left pixel is
/// (`x0`, `y0`) in the coordinates of the image it was cut from.
struct Plane<'a> {
    data: &'a [u8],
    width: usize,
    x0: usize,
    y0: usize,
}

impl Plane<'_> {
    /// The 3 bytes of pixel (`x`, `y`).
    fn pixel(&self, x: usize, y: usize) -> &[u8] {
        let i = ((y - self.y0) * self.width + (x - self.x0)) * 3;
        &self.data[i..i + 3]
    }

    /// The bytes of the pixels `cols` of row `y`.
    fn row(&self, y: usize, cols: Range<usize>) -> &[u8] {
        let start = ((y - self.y0) * self.width + (cols.start - self.x0)) * 3;
        &self.data[start..start + cols.len() * 3]
    }

    /// The pixels of `cols × rows`, row-major.
    fn copy(&self, cols: Range<usize>, rows: Range<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(cols.len() * rows.len() * 3);
        for y in rows {
            out.extend_from_slice(self.row(y, cols.clone()));
        }
        out
    }
}

/// Pillow's bicubic kernel with a = -0.5, written with the same operations in the same
/// order as `bicubic_filter` in Resample.c so the f64 results are identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point filter taps of one axis, for output positions `first .. first + count`.
struct Taps {
    /// Per output position: the first input index it reads.
    start: Vec<usize>,
    /// Per output position: how many input pixels it reads.
    len: Vec<usize>,
    /// Per output position: `ksize` weights (only the first `len` are used).
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the default
    /// box (the whole input) and the output positions `positions`.
    fn new(in_size: usize, out_size: usize, positions: Range<usize>) -> Taps {
        let count = positions.len();
        // Pillow: `(double)(in1 - in0) / outSize` with float box edges 0 and in_size;
        // in_size ≤ 2^24 is exact in f32, so this is the plain f64 quotient.
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut start = Vec::with_capacity(count);
        let mut len = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in positions.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; Rust's `as` does the same.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[i * ksize..i * ksize + n];
            for (fixed, &w) in row.iter_mut().zip(&k[..n]) {
                let w = if ww != 0.0 { w / ww } else { w };
                *fixed = to_fixed_point(w);
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Taps {
            start,
            len,
            weights,
            ksize,
        }
    }

    /// The input positions the taps read.
    fn span(&self) -> Range<usize> {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, n)| s + n)
            .max()
            .unwrap_or(first);
        first..last.max(first)
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.ksize..i * self.ksize + self.len[i]];
        (self.start[i], w)
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero to 22 fractional bits.
fn to_fixed_point(w: f64) -> i32 {
    let scaled = w * (1u32 << PRECISION_BITS) as f64;
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// `clip8`: drop the fractional bits (arithmetic shift) and clamp to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Accumulator start: one half, so the final shift rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass: the rows `rows` of `src`, resampled to the output columns of `taps`
/// (row-major RGB, `rows.len()` rows of `taps` columns).
fn resample_horizontal(src: &Plane, rows: Range<usize>, taps: &Taps) -> Vec<u8> {
    let cols = taps.len.len();
    let mut out = vec![0u8; rows.len() * cols * 3];
    out.par_chunks_mut(cols * 3)
        .zip(rows)
        .for_each(|(line_out, y)| {
            for (xx, px) in line_out.chunks_exact_mut(3).enumerate() {
                let (start, k) = taps.taps(xx);
                let mut acc = [HALF; 3];
                for (j, &kj) in k.iter().enumerate() {
                    let p = src.pixel(start + j, y);
                    acc[0] += i32::from(p[0]) * kj;
                    acc[1] += i32::from(p[1]) * kj;
                    acc[2] += i32::from(p[2]) * kj;
                }
                px.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
            }
        });
    out
}

/// Vertical pass: the columns `cols` of `src`, resampled to the output rows of `taps`
/// (row-major RGB, `taps` rows of `cols.len()` columns). Each output row accumulates whole
/// input rows (integer sums, so the order of the additions does not matter).
fn resample_vertical(src: &Plane, cols: Range<usize>, taps: &Taps) -> Vec<u8> {
    let n = cols.len() * 3;
    let mut out = vec![0u8; taps.len.len() * n];
    out.par_chunks_mut(n)
        .enumerate()
        .for_each(|(yy, line_out)| {
            let (start, k) = taps.taps(yy);
            let mut acc = vec![HALF; n];
            for (j, &kj) in k.iter().enumerate() {
                for (a, &v) in acc.iter_mut().zip(src.row(start + j, cols.clone())) {
                    *a += i32::from(v) * kj;
                }
            }
            for (o, &a) in line_out.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::process::crop_or_pad;

    fn ramp(width: u32, height: u32) -> RgbImage {
        let data = (0..width * height * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    #[test]
    fn kernel_matches_pillow_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        assert_eq!(to_fixed_point(1.0), 1 << 22);
        assert_eq!(to_fixed_point(-0.0625), -(1 << 18));
        assert_eq!(to_fixed_point(0.5 / (1 << 22) as f64), 1);
        assert_eq!(to_fixed_point(-0.5 / (1 << 22) as f64), -1);
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        let img = ramp(40, 30);
        assert!(vertical_first(&img, 39, 27)); // height shrinks by 3 > 2 × 1
        assert!(!vertical_first(&img, 39, 28)); // 2 is not > 2
        assert!(vertical_first(&img, 60, 29)); // width grows
        assert!(!vertical_first(&img, 20, 10)); // 20 is not > 2 × 20
        assert!(!vertical_first(&img, 40, 40)); // height grows
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = ramp(7, 5);
        assert_eq!(resize_bicubic(&img, 7, 5), img);
    }

    #[test]
    fn windows_are_crops_of_the_full_resize() {
        let img = ramp(23, 17);
        for (w, h) in [
            (40, 9),
            (9, 40),
            (23, 30),
            (11, 17),
            (5, 5),
            (20, 5),
            (23, 4),
        ] {
            let full = resize_bicubic(&img, w, h);
            let win = Window {
                x: w / 4,
                y: h / 3,
                width: w / 2,
                height: h / 2,
            };
            let part = resize_bicubic_window(&img, w, h, win);
            let expected = crop_or_pad(&full, win.x.into(), win.y.into(), win.width, win.height);
            assert_eq!(part, expected, "{w}x{h}");
        }
    }

    #[test]
    fn empty_sizes_do_not_panic() {
        let img = ramp(4, 3);
        assert_eq!(resize_bicubic(&img, 0, 5).data.len(), 0);
        let empty = RgbImage::filled(0, 0, [0, 0, 0]);
        assert_eq!(
            resize_bicubic(&empty, 3, 2),
            RgbImage::filled(3, 2, [0, 0, 0])
        );
    }
}
