//! The merges themselves: sample-weighted FedAvg, the Average Ensemble, coordinate-wise median
//! and trimmed mean, (Multi-)Krum, and the norm bound. Pure functions of verified weights.

use super::*;

/// Sample-weighted mean of parameters (normalisations must agree).
pub fn fedavg(contributions: &[Contribution<'_>]) -> Result<Weights, AggregateError> {
    let mut acc = FedAvg::new();
    for c in contributions {
        acc.add_weights(c.party, c.weights, c.samples)?;
    }
    acc.finish()
}

/// The Average Ensemble of the contributions, members in party-name order.
pub fn ensemble(contributions: &[Contribution<'_>]) -> Model {
    let mut members: Vec<Member> = contributions
        .iter()
        .map(|c| Member {
            party: c.party.to_string(),
            weight: c.samples as f64,
            weights: c.weights.clone(),
        })
        .collect();
    members.sort_by(|a, b| a.party.cmp(&b.party));
    Model::Ensemble(members)
}

pub(super) fn check_normalization(
    contributions: &[Contribution<'_>],
) -> Result<(), AggregateError> {
    let first = contributions[0].weights.normalization();
    for c in &contributions[1..] {
        if c.weights.normalization() != first {
            return Err(AggregateError::Normalization {
                party: c.party.to_string(),
            });
        }
    }
    Ok(())
}

/// Applies `combine` to each coordinate's values across the contributions.
pub(super) fn coordinate_wise(
    contributions: &[Contribution<'_>],
    combine: impl Fn(&mut [f32]) -> f32,
) -> Result<Weights, AggregateError> {
    check_normalization(contributions)?;
    let first = contributions[0].weights;
    let mut column = vec![0f32; contributions.len()];
    let mut t_index = 0;
    Ok(first.map_trainable(|t| {
        let out = (0..t.data.len())
            .map(|k| {
                for (slot, c) in column.iter_mut().zip(contributions) {
                    *slot = c.weights.trainable()[t_index].data[k];
                }
                combine(&mut column)
            })
            .collect();
        t_index += 1;
        out
    })?)
}

fn sort(v: &mut [f32]) {
    v.sort_by(f32::total_cmp);
}

/// Median of the values (mean of the two middle ones for an even count).
pub(super) fn median(v: &mut [f32]) -> f32 {
    sort(v);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        ((f64::from(v[n / 2 - 1]) + f64::from(v[n / 2])) / 2.0) as f32
    }
}

/// Mean after dropping ⌊β·n⌋ values at each end.
pub(super) fn trimmed_mean(v: &mut [f32], beta: f64) -> f32 {
    sort(v);
    let k = ((beta * v.len() as f64).floor() as usize).min((v.len() - 1) / 2);
    let kept = &v[k..v.len() - k];
    (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64) as f32
}

fn sq_distance(a: &Weights, b: &Weights) -> f64 {
    let d = a.l2_distance(b);
    d * d
}

/// Krum: each update is scored by the summed squared distances to its n − f − 2 nearest
/// others; the `m` lowest-scored are averaged (sample-weighted). Needs n > 2f + 2.
pub(super) fn krum(
    contributions: &[Contribution<'_>],
    f: usize,
    m: usize,
) -> Result<Weights, AggregateError> {
    let n = contributions.len();
    if n <= 2 * f + 2 {
        return Err(AggregateError::Unsuitable(format!(
            "krum with f = {f} needs more than {} updates, got {n}",
            2 * f + 2
        )));
    }
    if m > n - f {
        return Err(AggregateError::Unsuitable(format!(
            "multi-krum keeps m = {m} updates, at most n − f = {} here",
            n - f
        )));
    }
    check_normalization(contributions)?;
    let mut dist = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = sq_distance(contributions[i].weights, contributions[j].weights);
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            others.sort_by(f64::total_cmp);
            (others[..n - f - 2].iter().sum(), i)
        })
        .collect();
    // Ties break by party name, so the result does not depend on arrival order.
    scores.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| contributions[a.1].party.cmp(contributions[b.1].party))
    });
    let mut chosen: Vec<Contribution<'_>> =
        scores[..m].iter().map(|&(_, i)| contributions[i]).collect();
    chosen.sort_by(|a, b| a.party.cmp(b.party));
    fedavg(&chosen)
}

/// `w` moved towards `base` so that ‖w − base‖₂ ≤ `bound` (unchanged if already within).
pub fn clip(base: &Weights, w: &Weights, bound: f64) -> Result<Weights, AggregateError> {
    let d = base.l2_distance(w);
    if d <= bound {
        return Ok(w.clone());
    }
    let scale = (bound / d) as f32;
    let mut i = 0;
    Ok(w.map_trainable(|t| {
        let b = &base.trainable()[i];
        i += 1;
        t.data
            .iter()
            .zip(&b.data)
            .map(|(&v, &b)| b + (v - b) * scale)
            .collect()
    })?)
}
