use super::*;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn spec() -> ModelSpec {
    ModelSpec::parse(
        r#"format = 1
name = "t"
[task]
kind = "binary"
target = "y"
features = ["a", "b"]
[model]
hidden = [4]
[training]
learning_rate = 0.01
local_epochs = 1
batch_size = 8
seed = 1
"#,
        "<test>",
    )
    .unwrap()
}

fn party(name: &str) -> PartyId {
    name.parse().unwrap()
}

fn parties() -> Vec<PartyId> {
    ["plant-a", "plant-b", "plant-c"]
        .iter()
        .map(|p| party(p))
        .collect()
}

fn sums_of(rows: &[[f32; 2]]) -> FeatureSums {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    FeatureSums::of_rows(&flat, 2)
}

#[test]
fn a_party_claiming_a_huge_sample_count_weighs_at_most_half_by_default() {
    let ps = parties();
    let limits = Limits::default();
    // The attacker also lied in its feature sums about its rows.
    let reported: BTreeMap<PartyId, u64> = [
        (ps[0].clone(), 1_000_000_000_000),
        (ps[1].clone(), 100),
        (ps[2].clone(), 120),
    ]
    .into_iter()
    .collect();
    let claims = [(&ps[0], 1_000_000_000_000), (&ps[1], 100), (&ps[2], 120)];
    let w = limits.weights(&claims, &reported);
    assert_eq!(
        w,
        vec![220, 100, 120],
        "the attacker is lowered to the others' total"
    );
    // Two parties: one at most half, so equal weights.
    let w = limits.weights(&claims[..2], &reported);
    assert_eq!(w, vec![100, 100]);
}

#[test]
fn caps_by_reported_rows_and_max_weight_then_share() {
    let ps = parties();
    let mut limits: Limits = Limits::parse(
        "max_share = 1.0\nmax_weight = 500\n[party.plant-b]\nmax_weight = 50\n",
        &spec(),
        &ps,
    )
    .unwrap();
    let reported: BTreeMap<PartyId, u64> = [(ps[0].clone(), 300)].into_iter().collect();
    let claims = [(&ps[0], 1000), (&ps[1], 1000), (&ps[2], 1000)];
    // plant-a: its 300 reported rows; plant-b: its own 50; plant-c reported none: the most
    // any party reported (300), under the task's 500.
    assert_eq!(limits.weights(&claims, &reported), vec![300, 50, 300]);
    limits.max_share = 0.4;
    let w = limits.weights(&claims, &reported);
    let total: u64 = w.iter().sum();
    assert!(
        w.iter().all(|&x| x as f64 <= 0.4 * total as f64 + 1.0),
        "{w:?}"
    );
    assert_eq!(w[1], 50, "a party under its share keeps its weight");
}

#[test]
fn a_declared_party_may_weigh_more_than_the_task_share() {
    let ps = parties();
    let limits = Limits::parse("[party.plant-a]\nmax_share = 0.9\n", &spec(), &ps).unwrap();
    let reported = BTreeMap::new();
    let w = limits.weights(&[(&ps[0], 900), (&ps[1], 50), (&ps[2], 50)], &reported);
    assert_eq!(w, vec![900, 50, 50]);
    let w = limits.weights(&[(&ps[1], 900), (&ps[0], 50), (&ps[2], 50)], &reported);
    assert_eq!(
        w,
        vec![100, 50, 50],
        "an undeclared one is still held at half"
    );
}

#[test]
fn share_capping_holds_its_properties_on_random_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..2000 {
        let n = rng.random_range(1..8);
        let ws: Vec<(u64, f64)> = (0..n)
            .map(|_| {
                let w = if rng.random_bool(0.2) {
                    rng.random_range(1..1u64 << 40)
                } else {
                    rng.random_range(1..10_000)
                };
                let s = [0.2, 0.3, 0.5, 0.7, 1.0][rng.random_range(0..5)];
                (w, s)
            })
            .collect();
        let out = share_capped(&ws);
        let total: f64 = out.iter().map(|&x| x as f64).sum();
        let feasible = ws.iter().map(|&(_, s)| s).sum::<f64>() > 1.0;
        for (i, (&(w, s), &o)) in ws.iter().zip(&out).enumerate() {
            assert!(o >= 1 && o <= w, "{ws:?} → {out:?}");
            if feasible && o > 1 {
                // No weight above its share of the total, after rounding too.
                assert!(
                    o as f64 <= s * total * (1.0 + 1e-12),
                    "party {i}: {ws:?} → {out:?}"
                );
            }
        }
        if feasible {
            // The largest total the rule allows (bisection on T = Σ min(w_i, s_i·T)), kept
            // up to rounding: the rule lowers only what it must.
            let f = |t: f64| ws.iter().map(|&(w, s)| (w as f64).min(s * t)).sum::<f64>();
            let (mut lo, mut hi) = (0.0, ws.iter().map(|&(w, _)| w as f64).sum::<f64>());
            for _ in 0..200 {
                let mid = (lo + hi) / 2.0;
                if f(mid) >= mid { lo = mid } else { hi = mid }
            }
            let smallest = ws.iter().map(|&(_, s)| s).fold(1.0, f64::min);
            let slack = 2.0 * n as f64 / smallest + 1.0;
            assert!(
                total >= lo * (1.0 - 1e-9) - slack,
                "{ws:?} → {out:?}: total {total}, best {lo}"
            );
            assert!(
                total <= hi * (1.0 + 1e-9) + 1.0,
                "{ws:?} → {out:?}: total {total}, best {hi}"
            );
        }
        if !feasible && n > 0 {
            // Proportional to the shares (each party capped).
            let (w0, s0) = ws
                .iter()
                .zip(&out)
                .map(|(&(_, s), &o)| (o as f64, s))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            for (&(_, s), &o) in ws.iter().zip(&out) {
                let want = s / s0 * w0;
                assert!(
                    (o as f64 - want).abs() <= 1.0 + 1e-9 * want,
                    "{ws:?} → {out:?}"
                );
            }
        }
    }
}

#[test]
fn the_largest_total_is_kept_when_shares_allow_it() {
    assert_eq!(
        share_capped(&[(100, 0.5), (1, 0.5), (1, 0.5)]),
        vec![2, 1, 1]
    );
    assert_eq!(
        share_capped(&[(100, 0.5), (100, 0.5), (1, 0.5)]),
        vec![100, 100, 1]
    );
    assert_eq!(
        share_capped(&[(10, 0.3), (10, 0.3), (10, 0.3)]),
        vec![10, 10, 10]
    );
    assert_eq!(
        share_capped(&[(7, 0.5)]),
        vec![7],
        "one party is its own merge"
    );
    assert_eq!(share_capped(&[(5, 1.0), (9, 1.0)]), vec![5, 9]);
    // Rounding down must not leave a capped weight above its share (4 of 6 > 0.6 before).
    let out = share_capped(&[(10, 0.6), (10, 0.25), (1, 0.5)]);
    let total: u64 = out.iter().sum();
    assert!(out[0] as f64 <= 0.6 * total as f64, "{out:?}");
    // Above 2^53 a weight is clamped to 2^40 first, so the others keep theirs.
    assert_eq!(
        share_capped(&[(1 << 63, 0.5), (5, 0.5), (7, 0.5)]),
        vec![12, 5, 7]
    );
}

#[test]
fn a_party_lying_in_its_feature_sums_moves_the_normalisation_at_most_by_its_share() {
    let ps = parties();
    let honest = sums_of(&[[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]]);
    let mut liar = sums_of(&[[1000.0, -1000.0]]);
    liar.count = 1_000_000_000;
    liar.sum = liar.sum.iter().map(|x| x * 1e9).collect();
    liar.sum_sq = liar.sum_sq.iter().map(|x| x * 1e9).collect();
    let limits = Limits::default();
    let pooled = limits
        .pooled_sums(
            2,
            &[
                (ps[0].clone(), liar.clone()),
                (ps[1].clone(), honest.clone()),
                (ps[2].clone(), honest.clone()),
            ],
        )
        .unwrap();
    assert_eq!(
        pooled.count, 12,
        "the liar counts as many rows as the others together"
    );
    let mean = pooled.sum[0] / pooled.count as f64;
    assert!((mean - (1000.0 * 0.5 + 2.0 * 0.5)).abs() < 1e-6, "{mean}");
    // One party scaled down keeps its own mean and spread.
    let only = Limits {
        max_weight: Some(2),
        ..Limits::default()
    }
    .pooled_sums(2, &[(ps[1].clone(), honest.clone())])
    .unwrap();
    let (a, b) = (
        only.normalization().unwrap(),
        honest.normalization().unwrap(),
    );
    assert_eq!(only.count, 2);
    for j in 0..2 {
        assert!((a.mean[j] - b.mean[j]).abs() < 1e-12);
        assert!((a.std[j] - b.std[j]).abs() < 1e-12);
    }
}

#[test]
fn feature_sums_impossible_for_the_declared_ranges_are_refused_naming_the_feature() {
    let ps = parties();
    let limits = Limits::parse(
        "[feature.a]\nmin = 0.0\nmax = 10.0\n[feature.b]\nmin = -1.0\nmax = 1.0\n",
        &spec(),
        &ps,
    )
    .unwrap();
    let ok = sums_of(&[[0.0, -1.0], [10.0, 1.0], [5.0, 0.0]]);
    limits.check_sums(&spec(), &ok).unwrap();
    let high = sums_of(&[[11.0, 0.0], [12.0, 0.0]]);
    let e = limits.check_sums(&spec(), &high).unwrap_err();
    assert!(
        e.contains("\"a\"") && e.contains("mean") && e.contains("[0, 10]"),
        "{e}"
    );
    // Mean inside, spread impossible: values ±5 declared in [-1, 1].
    let wide = sums_of(&[[1.0, 5.0], [1.0, -5.0]]);
    let e = limits.check_sums(&spec(), &wide).unwrap_err();
    assert!(
        e.contains("\"b\"") && e.contains("spread") && e.contains("[-1, 1]"),
        "{e}"
    );
}

#[test]
fn bad_limits_name_the_field() {
    let ps = parties();
    let cases = [
        ("max_share = 0.0", "`max_share`"),
        ("max_share = 1.5", "`max_share`"),
        ("max_weight = 0", "`max_weight`"),
        (
            "[party.plant-z]\nmax_share = 0.5",
            "`party.plant-z` does not take part",
        ),
        (
            "[party.plant-a]\nmax_share = 2.0",
            "`party.plant-a.max_share`",
        ),
        (
            "[feature.zz]\nmin = 0.0\nmax = 1.0",
            "`feature.zz` is not a feature",
        ),
        (
            "[feature.a]\nmin = 1.0\nmax = 1.0",
            "`feature.a` needs finite min < max",
        ),
        ("max_shares = 0.5", "unknown field"),
    ];
    for (text, want) in cases {
        let e = Limits::parse(text, &spec(), &ps).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn limits_round_trip_through_toml_and_json_and_old_tasks_read_as_the_defaults() {
    let ps = parties();
    let l = Limits::parse(
        "max_share = 0.6\nmax_weight = 1000\n[party.plant-a]\nmax_weight = 5\n[feature.a]\nmin = -2.5\nmax = 3.0\n",
        &spec(),
        &ps,
    )
    .unwrap();
    assert_eq!(Limits::parse(&l.to_toml(), &spec(), &ps).unwrap(), l);
    assert_eq!(Limits::from_json(&l.to_json()).unwrap(), l);
    assert_eq!(Limits::from_json("{}").unwrap(), Limits::default());
    assert_eq!(Limits::parse("", &spec(), &ps).unwrap(), Limits::default());
}

#[test]
fn pooled_sums_keep_each_party_s_mean_where_values_are_missing_and_skip_absent_sensors() {
    let mut spec = spec();
    spec.task.columns.insert(
        "a".into(),
        shared_model::encoding::Column {
            missing: shared_model::encoding::Missing::Mean,
            ..Default::default()
        },
    );
    // one party of 1000 rows (a present in 30, mean 50) capped to 10 rows
    let big = FeatureSums {
        count: 1000,
        sum: vec![30.0 * 50.0, 1000.0],
        sum_sq: vec![30.0 * 2500.0, 1000.0],
        present: vec![30, 1000],
        categories: Default::default(),
        histograms: Default::default(),
    };
    let limits = Limits {
        max_weight: Some(10),
        max_share: 1.0,
        ..Limits::default()
    };
    let pooled = limits.pooled_sums(2, &[(party("plant-a"), big)]).unwrap();
    assert_eq!(pooled.count, 10);
    let n = pooled.normalization().unwrap();
    assert!((n.mean[0] - 50.0).abs() < 1e-4, "{n:?}");
    // a plant with no value of a ranged feature is not refused for it
    let ranged =
        Limits::parse("[feature.a]\nmin = 200.0\nmax = 300.0\n", &spec, &parties()).unwrap();
    let absent = FeatureSums {
        count: 4,
        sum: vec![0.0, 4.0],
        sum_sq: vec![0.0, 4.0],
        present: vec![0, 4],
        categories: Default::default(),
        histograms: Default::default(),
    };
    assert_eq!(ranged.check_sums(&spec, &absent), Ok(()));
}
