//! Distribution summaries and plain-text tables for the terminal.

use rlvr_kernels::reference::quantile;

/// Mean, 5/50/95% quantiles (linear interpolation, the numpy default) and max of some values.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// How many values.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// 5% quantile.
    pub p5: f64,
    /// Median.
    pub p50: f64,
    /// 95% quantile.
    pub p95: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// The summary of `values`; `None` when there are none.
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p5: quantile(&v, 0.05),
            p50: quantile(&v, 0.5),
            p95: quantile(&v, 0.95),
            max: v[v.len() - 1],
        })
    }

    /// The row cells: mean, p5, p50, p95, max with `digits` decimals.
    pub fn cells(&self, digits: usize) -> Vec<String> {
        [self.mean, self.p5, self.p50, self.p95, self.max].iter().map(|x| format!("{x:.digits$}")).collect()
    }
}

/// Prints a table: the first column left-aligned, the others right-aligned, widths to fit.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let cols = headers.len();
    let width =
        |c: usize| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).chain([headers[c].len()]).max();
    let widths: Vec<usize> = (0..cols).map(|c| width(c).unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let w = widths[c];
            if c == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
