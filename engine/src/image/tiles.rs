//! Dynamic resolution: an image becomes a grid of square tiles at the vision tower's own
//! size (plus, optionally, a global thumbnail), so a tower trained at 384×384 sees a large
//! or elongated picture at a useful resolution.
//!
//! Two rules choose the grid from the candidates `cols × rows ≤ max_tiles`:
//!
//! - [`llava_next_grid`]: LLaVA-NeXT's `select_best_resolution` — maximise the *effective
//!   resolution* R_e (the pixels of the image once scaled to fit the canvas, never counted
//!   above the original's), then, on a tie, minimise the *wasted resolution*
//!   R_w = canvas − R_e. Any canvas that holds the image without shrinking it gives the same
//!   R_e, so a 394×390 picture goes to a 2×2 canvas (768×768 at 384 px tiles): four tiles for
//!   5 % more pixels, and the image upscaled ~2× to fill them.
//! - [`relaxed_grid`]: BlueLM-V-3B's *relaxed aspect-ratio matching* (arXiv 2411.10640): a
//!   candidate replaces the best one so far when its R_e is clearly larger
//!   (`R_e − R_e,max > α·R_e,max`) or about the same (`|R_e − R_e,max| < α·R_e,max`) with less
//!   waste (`R_w < R_w,min`). Candidates are visited from the most tiles to the fewest, so a
//!   grid with fewer tiles wins whenever it keeps the effective resolution within α: the
//!   394×390 picture stays one tile. Fewer image tokens, no gratuitous upscaling.
//!
//! R_e and R_w are computed exactly as LLaVA-NeXT computes them (Python floats, `int()`
//! truncation), so both rules match their Python reference on every size
//! (`tests/fixtures/bluelm_tiny/dynamic_resolution.json`).
//!
//! [`tile_image`] then lays the picture out as LLaVA-NeXT's `resize_and_pad_image` +
//! `divide_to_patches` do: resized (bicubic) to fit the grid's canvas keeping its aspect
//! ratio, centred on black, cut into tiles in row-major order; the thumbnail is the whole
//! picture squashed to one tile.

use super::{RgbImage, resize_bicubic};

/// A grid of `cols × rows` tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TileGrid {
    pub cols: usize,
    pub rows: usize,
}

impl TileGrid {
    pub fn tiles(self) -> usize {
        self.cols * self.rows
    }

    /// The canvas in pixels for tiles of `tile × tile`: `(width, height)`.
    pub fn canvas(self, tile: usize) -> (usize, usize) {
        (self.cols * tile, self.rows * tile)
    }
}

/// The candidate grids for at most `max_tiles` tiles, in the order the rules visit them:
/// by tile count from `max_tiles` down to 1, and for one count by columns ascending
/// (so for 2 tiles: 1×2 — one column, two rows — before 2×1).
pub fn candidate_grids(max_tiles: usize) -> Vec<TileGrid> {
    let mut out = Vec::new();
    for n in (1..=max_tiles.max(1)).rev() {
        for cols in 1..=n {
            if n.is_multiple_of(cols) {
                out.push(TileGrid {
                    cols,
                    rows: n / cols,
                });
            }
        }
    }
    out
}

/// LLaVA-NeXT's effective and wasted resolution of a `width × height` image on a
/// `canvas_w × canvas_h` canvas.
pub fn resolutions(width: usize, height: usize, canvas_w: usize, canvas_h: usize) -> (u64, u64) {
    let (w, h) = (width as f64, height as f64);
    let scale = (canvas_w as f64 / w).min(canvas_h as f64 / h);
    // Python: int(original_width * scale), truncation of a non-negative float.
    let (dw, dh) = ((w * scale) as u64, (h * scale) as u64);
    let effective = (dw * dh).min(width as u64 * height as u64);
    let wasted = (canvas_w * canvas_h) as u64 - effective;
    (effective, wasted)
}

/// LLaVA-NeXT's `select_best_resolution` over [`candidate_grids`]: the largest effective
/// resolution, the least waste on a tie, the first candidate on a full tie.
pub fn llava_next_grid(width: usize, height: usize, tile: usize, max_tiles: usize) -> TileGrid {
    let mut best = None;
    let (mut max_eff, mut min_waste) = (0u64, u64::MAX);
    for g in candidate_grids(max_tiles) {
        let (cw, ch) = g.canvas(tile);
        let (eff, waste) = resolutions(width, height, cw, ch);
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            (max_eff, min_waste, best) = (eff, waste, Some(g));
        }
    }
    best.unwrap_or(TileGrid { cols: 1, rows: 1 })
}

/// BlueLM-V-3B's relaxed aspect-ratio matching over [`candidate_grids`] with threshold
/// `alpha` (see the module documentation). The first candidate is the starting point;
/// a replacement takes over both R_e,max and R_w,min. One addition to the paper's rule: an
/// equal R_e with less waste always replaces, so a degenerate image (R_e = 0 everywhere)
/// gets one tile, not the largest canvas.
pub fn relaxed_grid(
    width: usize,
    height: usize,
    tile: usize,
    max_tiles: usize,
    alpha: f64,
) -> TileGrid {
    let mut best: Option<TileGrid> = None;
    let (mut max_eff, mut min_waste) = (0u64, u64::MAX);
    for g in candidate_grids(max_tiles) {
        let (cw, ch) = g.canvas(tile);
        let (eff, waste) = resolutions(width, height, cw, ch);
        let gain = eff as f64 - max_eff as f64;
        let band = alpha * max_eff as f64;
        // An equal R_e is "about the same" even when the band is empty (R_e,max = 0: an
        // image a pixel wide truncates to nothing on every canvas).
        let same = gain.abs() < band || gain == 0.0;
        if best.is_none() || gain > band || (same && waste < min_waste) {
            (max_eff, min_waste, best) = (eff, waste, Some(g));
        }
    }
    best.unwrap_or(TileGrid { cols: 1, rows: 1 })
}

/// Upscaling factor of the picture's longer fit on a grid's canvas (> 1 means enlarged).
pub fn upscale(width: usize, height: usize, grid: TileGrid, tile: usize) -> f64 {
    let (cw, ch) = grid.canvas(tile);
    (cw as f64 / width as f64).min(ch as f64 / height as f64)
}

/// LLaVA-NeXT's `resize_and_pad_image`: the image resized (bicubic) to fit
/// `target_w × target_h` with its aspect ratio kept (the fitted side rounded up, as
/// `math.ceil` there), centred on black.
pub fn resize_and_pad(img: &RgbImage, target_w: u32, target_h: u32) -> RgbImage {
    let (w, h) = (f64::from(img.width.max(1)), f64::from(img.height.max(1)));
    let scale_w = f64::from(target_w) / w;
    let scale_h = f64::from(target_h) / h;
    let (new_w, new_h) = if scale_w < scale_h {
        (target_w, ((h * scale_w).ceil() as u32).clamp(1, target_h))
    } else {
        (((w * scale_h).ceil() as u32).clamp(1, target_w), target_h)
    };
    let resized = if (new_w, new_h) == (img.width, img.height) {
        img.clone()
    } else {
        resize_bicubic(img, new_w, new_h)
    };
    let mut out = RgbImage::filled(target_w, target_h, [0, 0, 0]);
    let (x0, y0) = ((target_w - new_w) / 2, (target_h - new_h) / 2);
    let (src_stride, dst_stride) = (new_w as usize * 3, target_w as usize * 3);
    for (y, row) in resized.data.chunks_exact(src_stride).enumerate() {
        let at = (y0 as usize + y) * dst_stride + x0 as usize * 3;
        out.data[at..at + src_stride].copy_from_slice(row);
    }
    out
}

/// The `tile × tile` tile at column `c`, row `r` of `canvas`.
fn crop_tile(canvas: &RgbImage, c: usize, r: usize, tile: usize) -> RgbImage {
    let stride = canvas.width as usize * 3;
    let mut data = Vec::with_capacity(tile * tile * 3);
    for y in r * tile..(r + 1) * tile {
        let at = y * stride + c * tile * 3;
        data.extend_from_slice(&canvas.data[at..at + tile * 3]);
    }
    RgbImage {
        width: tile as u32,
        height: tile as u32,
        data,
    }
}

/// An image laid out for a tiled vision tower.
#[derive(Clone, Debug)]
pub struct Tiles {
    pub grid: TileGrid,
    /// The grid's tiles, row-major, then the thumbnail if there is one.
    pub images: Vec<RgbImage>,
    pub thumbnail: bool,
}

/// How an image is tiled (the `bluelm_v` config's dynamic-resolution settings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TilingSpec {
    /// Tile side in pixels (the tower's `image_size`).
    pub tile: usize,
    pub max_tiles: usize,
    /// The relaxed-matching threshold α.
    pub alpha: f64,
    /// Append a global thumbnail (the whole image squashed to one tile) after the tiles of a
    /// grid of more than one tile.
    pub thumbnail: bool,
}

impl TilingSpec {
    /// The grid an image of `width × height` gets.
    pub fn grid(&self, width: usize, height: usize) -> TileGrid {
        relaxed_grid(width, height, self.tile, self.max_tiles, self.alpha)
    }

    /// Vision passes (tiles plus thumbnail) for a grid.
    pub fn passes(&self, grid: TileGrid) -> usize {
        grid.tiles() + usize::from(self.thumbnail && grid.tiles() > 1)
    }
}

/// Tiles `img` per `spec`: [`relaxed_grid`], [`resize_and_pad`] to the canvas, row-major
/// tiles, then the thumbnail.
pub fn tile_image(img: &RgbImage, spec: &TilingSpec) -> Tiles {
    let grid = spec.grid(img.width as usize, img.height as usize);
    let tile = spec.tile;
    let (cw, ch) = grid.canvas(tile);
    let canvas = resize_and_pad(img, cw as u32, ch as u32);
    let mut images = Vec::with_capacity(spec.passes(grid));
    for r in 0..grid.rows {
        for c in 0..grid.cols {
            images.push(crop_tile(&canvas, c, r, tile));
        }
    }
    let thumbnail = spec.thumbnail && grid.tiles() > 1;
    if thumbnail {
        images.push(resize_bicubic(img, tile as u32, tile as u32));
    }
    Tiles {
        grid,
        images,
        thumbnail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_run_from_most_tiles_to_fewest() {
        let c = candidate_grids(4);
        let pairs: Vec<(usize, usize)> = c.iter().map(|g| (g.cols, g.rows)).collect();
        assert_eq!(
            pairs,
            [
                (1, 4),
                (2, 2),
                (4, 1),
                (1, 3),
                (3, 1),
                (1, 2),
                (2, 1),
                (1, 1)
            ]
        );
    }

    #[test]
    fn near_square_picture_stays_one_tile_under_the_relaxed_rule() {
        // LLaVA-NeXT enlarges it to 2×2 for 5 % more effective pixels.
        assert_eq!(
            llava_next_grid(394, 390, 384, 9),
            TileGrid { cols: 2, rows: 2 }
        );
        assert_eq!(
            relaxed_grid(394, 390, 384, 9, 0.1),
            TileGrid { cols: 1, rows: 1 }
        );
    }

    #[test]
    fn tiles_are_row_major_then_thumbnail() {
        let mut img = RgbImage::filled(8, 4, [0, 0, 0]);
        for x in 4..8 {
            for y in 0..4 {
                let i = (y * 8 + x) * 3;
                img.data[i] = 255;
            }
        }
        let spec = TilingSpec {
            tile: 4,
            max_tiles: 2,
            alpha: 0.1,
            thumbnail: true,
        };
        let t = tile_image(&img, &spec);
        assert_eq!(t.grid, TileGrid { cols: 2, rows: 1 });
        assert_eq!(t.images.len(), 3);
        assert_eq!(t.images[0].pixel(0, 0), [0, 0, 0]);
        assert_eq!(t.images[1].pixel(0, 0), [255, 0, 0]);
        assert_eq!((t.images[2].width, t.images[2].height), (4, 4));
    }
}
