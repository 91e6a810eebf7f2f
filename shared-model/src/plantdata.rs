//! A synthetic plant-process dataset that looks like an MES/ERP export: production line,
//! product, supplier and shift as text; temperature, pressure, line speed and humidity as
//! numbers, with the blanks of sensors that were down; a batch id (an identifier, not a
//! feature); and two targets — `yield_kg` (a regression far from unit scale, ~150–330) and
//! `grade` (`ok` / `rework` / `scrap`, from the yield). Each site runs its own process: its
//! temperature set-point, its lines' mix and a yield offset differ, so sites are not iid.
//!
//! The yield is known in closed form ([`PlantData::yield_of`]), so tests can tell a model that
//! learned it from one that predicts the mean.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// The categorical columns and their values (the last product is rare: ~1 % of rows).
pub const LINES: [&str; 4] = ["L1", "L2", "L3", "L4"];
/// Products made.
pub const PRODUCTS: [&str; 5] = ["A-100", "B-200", "C-300", "D-400", "E-500"];
/// Raw-material suppliers.
pub const SUPPLIERS: [&str; 4] = ["ACME", "Borealis", "Chen Metals", "Duro"];
/// Shifts.
pub const SHIFTS: [&str; 3] = ["early", "late", "night"];

/// The generator's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlantData {
    /// Rows per site.
    pub rows_per_site: usize,
    /// Sites (each with its own process shift).
    pub sites: usize,
    /// Share of sensor cells left blank (temperature, pressure, humidity), in [0, 1).
    pub blank_share: f64,
    /// Seed of the ChaCha8 stream.
    pub seed: u64,
}

impl Default for PlantData {
    fn default() -> Self {
        Self {
            rows_per_site: 300,
            sites: 3,
            blank_share: 0.05,
            seed: 7,
        }
    }
}

/// One generated row.
#[derive(Clone, Debug, PartialEq)]
pub struct PlantRow {
    /// Site index.
    pub site: usize,
    /// Index into [`LINES`].
    pub line: usize,
    /// Index into [`PRODUCTS`].
    pub product: usize,
    /// Index into [`SUPPLIERS`].
    pub supplier: usize,
    /// Index into [`SHIFTS`].
    pub shift: usize,
    /// °C.
    pub temp_c: f64,
    /// bar.
    pub pressure_bar: f64,
    /// m/min.
    pub speed_mpm: f64,
    /// %.
    pub humidity_pct: f64,
}

/// The feature columns' header (the target comes last).
pub const HEADER: &str =
    "batch_id,line,product,supplier,shift,temp_c,pressure_bar,speed_mpm,humidity_pct";

/// Which target the CSV carries (only one: the grade is made from the yield, so a file with
/// both would hand the model its answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `yield_kg`, a regression.
    Yield,
    /// `grade`: ok / rework / scrap.
    Grade,
}

impl Target {
    /// The column's name.
    pub fn column(self) -> &'static str {
        match self {
            Target::Yield => "yield_kg",
            Target::Grade => "grade",
        }
    }
}

impl PlantData {
    /// The noiseless yield of a row, in kg.
    pub fn yield_of(r: &PlantRow) -> f64 {
        let line = [0.0, 12.0, -8.0, 5.0][r.line];
        let product = [0.0, 20.0, -15.0, 8.0, -30.0][r.product];
        let supplier = [0.0, -6.0, 9.0, -3.0][r.supplier];
        let shift = [5.0, 0.0, -12.0][r.shift];
        let site = [0.0, -10.0, 14.0, -4.0, 6.0][r.site % 5];
        250.0 + line + product + supplier + shift + site - 0.08 * (r.temp_c - 200.0).powi(2)
            + 15.0 * (r.pressure_bar - 6.5)
            + 0.4 * (r.speed_mpm - 40.0)
            - 0.3 * (r.humidity_pct - 50.0)
    }

    /// The grade of a yield: ok above 255 kg, rework from 225 kg, scrap below.
    pub fn grade_of(yield_kg: f64) -> &'static str {
        if yield_kg >= 255.0 {
            "ok"
        } else if yield_kg >= 225.0 {
            "rework"
        } else {
            "scrap"
        }
    }

    /// The rows, site by site, with their yield (noise included).
    pub fn rows(&self) -> Vec<(PlantRow, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let noise = Normal::new(0.0, 8.0).expect("finite");
        let mut out = Vec::with_capacity(self.rows_per_site * self.sites);
        for site in 0..self.sites {
            // Each site runs hotter or cooler and favours other lines.
            let set_point = 200.0 + [0.0, 9.0, -7.0, 4.0, -3.0][site % 5];
            let temp = Normal::new(set_point, 6.0).expect("finite");
            let pressure = Normal::new(6.5 + 0.2 * site as f64, 0.6).expect("finite");
            for _ in 0..self.rows_per_site {
                let line = if rng.random::<f64>() < 0.5 {
                    site % LINES.len()
                } else {
                    rng.random_range(0..LINES.len())
                };
                let product = if rng.random::<f64>() < 0.01 {
                    4
                } else {
                    rng.random_range(0..4)
                };
                let r = PlantRow {
                    site,
                    line,
                    product,
                    supplier: rng.random_range(0..SUPPLIERS.len()),
                    shift: rng.random_range(0..SHIFTS.len()),
                    temp_c: temp.sample(&mut rng),
                    pressure_bar: pressure.sample(&mut rng),
                    speed_mpm: rng.random_range(30.0..50.0),
                    humidity_pct: rng.random_range(30.0..70.0),
                };
                let y = Self::yield_of(&r) + noise.sample(&mut rng);
                out.push((r, y));
            }
        }
        out
    }

    /// The CSV text of [`Self::rows`]: sensor blanks as empty cells (humidity's as `NA`, as
    /// some historians write them), numbers at the precision an export has.
    pub fn csv(&self, target: Target) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xb1a2_c3d4);
        let mut s = format!("{HEADER},{}\n", target.column());
        for (i, (r, y)) in self.rows().iter().enumerate() {
            let mut blank = |v: String, token: &str| {
                if rng.random::<f64>() < self.blank_share {
                    token.to_string()
                } else {
                    v
                }
            };
            let temp = blank(format!("{:.1}", r.temp_c), "");
            let pressure = blank(format!("{:.2}", r.pressure_bar), "");
            let humidity = blank(format!("{:.0}", r.humidity_pct), "NA");
            let label = match target {
                Target::Yield => format!("{y:.1}"),
                Target::Grade => Self::grade_of(*y).to_string(),
            };
            let _ = writeln!(
                s,
                "B{:06},{},{},{},{},{temp},{pressure},{:.1},{humidity},{label}",
                100_000 + i,
                LINES[r.line],
                PRODUCTS[r.product],
                SUPPLIERS[r.supplier],
                SHIFTS[r.shift],
                r.speed_mpm,
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_has_text_blanks_an_identifier_and_unscaled_targets() {
        let g = PlantData::default();
        let text = g.csv(Target::Yield);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{HEADER},yield_kg"));
        assert_eq!(lines.len(), 1 + 900);
        assert_eq!(text, g.csv(Target::Yield), "deterministic");
        let blanks = lines.iter().filter(|l| l.contains(",,")).count();
        assert!(blanks > 30, "{blanks} rows with an empty cell");
        assert!(text.contains(",NA,"));
        let ys: Vec<f64> = lines[1..]
            .iter()
            .map(|l| l.split(',').nth(9).unwrap().parse().unwrap())
            .collect();
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        assert!((200.0..300.0).contains(&mean), "mean yield {mean}");
        let graded = g.csv(Target::Grade);
        for grade in ["ok", "rework", "scrap"] {
            let n = graded
                .lines()
                .filter(|l| l.ends_with(&format!(",{grade}")))
                .count();
            assert!(n > 50, "{grade}: {n}");
        }
    }
}
