//! Vocabularies found in the statistics step: the spec keys, the plant's counts, the rule,
//! federated equal to pooled, and the simulation's wide encoding equal to a plant's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::blob::{self, BlobMeta, BlobRole};
use crate::data::load;
use crate::model::{Model, model_limits};
use crate::weights::Weights;

const SPEC: &str = r#"
format = 1
name = "discover"
[task]
kind = "regression"
target = "y"
features = ["temp", "supplier", "line"]
[task.columns.temp]
missing = "mean"
[task.columns.supplier]
discover = 3
min_count = 2
missing = "mean"
indicator = true
[task.columns.line]
discover = 2
min_count = 1
missing = "other"
[model]
hidden = [4]
[training]
learning_rate = 0.01
local_epochs = 1
batch_size = 8
seed = 1
"#;

fn spec() -> ModelSpec {
    ModelSpec::parse(SPEC, "<discover>").unwrap()
}

/// Two plants' exports: supplier "acme" is common, "bolt" appears twice (once per plant),
/// "zed" once; line L1 and L2, blanks in both text columns.
const PLANT_A: &str =
    "temp,supplier,line,y\n1,acme,L1,1\n2,acme,L2,2\n,bolt,L1,3\n4,,L1,4\n5,acme,,5\n";
const PLANT_B: &str = "y,line,supplier,temp\n6,L2,acme,6\n7,L2,bolt,7\n8,L1,zed,\n9,L3,acme,9\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// What a live plant reports: its training rows' sums (here: every row) and its counts.
fn live_sums(spec: &ModelSpec, path: &Path) -> FeatureSums {
    let (ds, report) = load(path, spec).unwrap();
    FeatureSums::of_dataset(spec, &ds).with_categories(spec, &report.counts.seen_among(None))
}

#[test]
fn the_spec_fixes_the_layout_and_keeps_declared_ids() {
    let s = spec();
    // temp; supplier 3 slots + other + indicator; line 2 slots + other
    assert_eq!(s.input_width(), 1 + 5 + 3);
    assert_eq!(
        s.input_names()[1..6],
        [
            "supplier=(slot 0)",
            "supplier=(slot 1)",
            "supplier=(slot 2)",
            "supplier=(other)",
            "supplier (missing)"
        ]
    );
    assert!(s.discovers());
    // the TOML round-trips, and a found vocabulary changes neither id nor text
    let again = ModelSpec::parse(&s.to_toml(), "<again>").unwrap();
    assert_eq!(again.id(), s.id());
    let found = BTreeMap::from([
        ("supplier".to_string(), vec!["acme".to_string()]),
        ("line".to_string(), vec![]),
    ]);
    let r = s.with_vocabularies(&found).unwrap();
    assert_eq!(r.id(), s.id());
    assert_eq!(r.to_toml(), s.to_toml());
    assert_eq!(r.input_names()[1], "supplier=acme");
    assert_eq!(r.vocabularies(), found);
}

#[test]
fn bad_discover_keys_and_vocabularies_are_named() {
    let bad = |from: &str, to: &str| {
        ModelSpec::parse(&SPEC.replacen(from, to, 1), "<t>")
            .unwrap_err()
            .to_string()
    };
    assert!(bad("discover = 3", "discover = 0").contains("expected 1 to 1000 slots"));
    assert!(
        bad("discover = 3", "discover = 3\ncategories = [\"a\"]")
            .contains("declare `categories` or `discover`")
    );
    assert!(
        bad("discover = 3\nmin_count = 2", "min_count = 2").contains("only read with `discover`")
    );
    assert!(bad("min_count = 2", "min_count = 0").contains("at least 1"));
    let s = spec();
    let too_many = BTreeMap::from([
        (
            "supplier".to_string(),
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
        ),
        ("line".to_string(), vec![]),
    ]);
    assert!(
        s.with_vocabularies(&too_many)
            .unwrap_err()
            .contains("4 categories found for 3 slots")
    );
    let missing = BTreeMap::from([("supplier".to_string(), vec![])]);
    assert!(
        s.with_vocabularies(&missing)
            .unwrap_err()
            .contains("\"line\"")
    );
    let foreign = BTreeMap::from([
        ("supplier".to_string(), vec![]),
        ("line".to_string(), vec![]),
        ("temp".to_string(), vec![]),
    ]);
    assert!(
        s.with_vocabularies(&foreign)
            .unwrap_err()
            .contains("\"temp\"")
    );
}

#[test]
fn plants_count_their_values_and_the_rule_keeps_the_common_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec();
    let a = live_sums(&s, &write(dir.path(), "a.csv", PLANT_A));
    assert_eq!(
        a.categories["supplier"],
        BTreeMap::from([("acme".to_string(), 3), ("bolt".to_string(), 1)])
    );
    // before the vocabulary is known every present value is "other", nothing is "unseen"
    let (_, report) = load(&write(dir.path(), "a2.csv", PLANT_A), &s).unwrap();
    assert_eq!(report.counts.unseen, vec![0, 0, 0]);
    let b = live_sums(&s, &write(dir.path(), "b.csv", PLANT_B));
    let mut merged = a.clone();
    merged.merge(&b).unwrap();
    assert_eq!(merged.validate_found(&s), Ok(()));
    let norm = merged.normalization_for(&s).unwrap();
    // acme 5 rows, bolt 2 (min_count 2, across plants), zed 1 (too rare); line L1 4, L2 3,
    // L3 1 (two slots)
    assert_eq!(norm.vocabularies["supplier"], ["acme", "bolt"]);
    assert_eq!(norm.vocabularies["line"], ["L1", "L2"]);
    // slot statistics are the shares among the 8 present supplier values
    let p = 5.0 / 8.0f64;
    assert!((f64::from(norm.mean[1]) - p).abs() < 1e-6);
    assert!((f64::from(norm.std[1]) - (p * (1.0 - p)).sqrt()).abs() < 1e-6);
    assert_eq!(norm.mean[3], 0.0, "the unused slot");
    assert!(
        (f64::from(norm.mean[4]) - 1.0 / 8.0).abs() < 1e-6,
        "other: zed"
    );
    // what the plants then load encodes the found vocabulary
    let r = s.with_vocabularies(&norm.vocabularies).unwrap();
    let (ds, report) = load(&dir.path().join("b.csv"), &r).unwrap();
    assert_eq!(&ds.row(2)[1..6], &[0.0, 0.0, 0.0, 1.0, 0.0], "zed is other");
    assert_eq!(&ds.row(3)[6..9], &[0.0, 0.0, 1.0], "L3 is other");
    assert_eq!(report.counts.unseen, vec![0, 1, 1]);
}

#[test]
fn federated_vocabularies_and_normalisation_equal_the_pooled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec();
    let a = live_sums(&s, &write(dir.path(), "a.csv", PLANT_A));
    let b = live_sums(&s, &write(dir.path(), "b.csv", PLANT_B));
    let mut merged = a;
    merged.merge(&b).unwrap();
    // the same rows in one file (B's columns reordered as A's)
    let pooled_text = format!("{PLANT_A}6,acme,L2,6\n7,bolt,L2,7\n,zed,L1,8\n9,acme,L3,9\n");
    let pooled = live_sums(&s, &write(dir.path(), "all.csv", &pooled_text));
    assert_eq!(merged.categories, pooled.categories);
    let (m, p) = (
        merged.normalization_for(&s).unwrap(),
        pooled.normalization_for(&s).unwrap(),
    );
    assert_eq!(m.vocabularies, p.vocabularies);
    for (x, y) in m.mean.iter().zip(&p.mean).chain(m.std.iter().zip(&p.std)) {
        assert!((x - y).abs() < 1e-6, "{m:?} vs {p:?}");
    }
}

/// Bit-identical rows (NaN marks a blank filled with the mean).
fn same(a: &Dataset, b: &Dataset) {
    assert_eq!(
        (a.width, a.len(), &a.targets),
        (b.width, b.len(), &b.targets)
    );
    let bits = |d: &Dataset| d.features.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b), "{a:?} vs {b:?}");
}

#[test]
fn the_simulation_encodes_as_the_plant_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec();
    let path = write(dir.path(), "a.csv", PLANT_A);
    let (declared_rows, report) = load(&path, &s).unwrap();
    let wide = wide_spec(&s, &report.counts.seen_among(None));
    let (wide_rows, _) = load(&path, &wide).unwrap();
    // before the vocabularies: exactly what the plant sums
    same(&recode(&wide, &s, &wide_rows), &declared_rows);
    let live = live_sums(&s, &path);
    assert_eq!(plant_sums(&wide, &s, &wide_rows), live);
    // after: exactly what the plant loads with the found vocabularies
    let found = BTreeMap::from([
        (
            "supplier".to_string(),
            vec!["bolt".to_string(), "acme".to_string()],
        ),
        ("line".to_string(), vec!["L2".to_string()]),
    ]);
    let r = s.with_vocabularies(&found).unwrap();
    let (resolved_rows, _) = load(&path, &r).unwrap();
    same(&recode(&wide, &r, &wide_rows), &resolved_rows);
    let (spec_alone, norm) = fix_alone(&wide, &s, &wide_rows).unwrap();
    assert_eq!(norm, live.normalization_for(&s).unwrap());
    assert_eq!(
        spec_alone.vocabularies()["supplier"],
        ["acme"],
        "bolt once: below min_count"
    );
}

#[test]
fn blobs_carry_the_vocabularies_and_class_names() {
    let s = spec();
    let found = BTreeMap::from([
        ("supplier".to_string(), vec!["acme".to_string()]),
        ("line".to_string(), vec!["L1".to_string(), "L2".to_string()]),
    ]);
    let r = s.with_vocabularies(&found).unwrap();
    let w = Weights::initial(&r, &crate::stats::Normalization::identity(r.input_width()));
    let bytes = Model::Single(w.clone()).encode(&r, BlobRole::Merged);
    // a reader with only the declared spec learns the vocabularies from the blob
    assert_eq!(blob::spec_for(&bytes, &s, model_limits(&s)).unwrap(), r);
    assert_eq!(
        Model::decode(&bytes, &r, BlobRole::Merged).unwrap(),
        Model::Single(w.clone())
    );
    // another vocabulary is another model; the declared spec alone decodes nothing
    let other = s
        .with_vocabularies(&BTreeMap::from([
            ("supplier".to_string(), vec!["bolt".to_string()]),
            ("line".to_string(), vec![]),
        ]))
        .unwrap();
    let e = Model::decode(&bytes, &other, BlobRole::Merged).unwrap_err();
    assert!(e.to_string().contains("vocabularies"), "{e}");
    assert!(Model::decode(&bytes, &s, BlobRole::Merged).is_err());
    let plain = blob::encode(&w, &BlobMeta::new(&s, BlobRole::Merged));
    let e = blob::spec_for(&plain, &s, model_limits(&s)).unwrap_err();
    assert!(e.to_string().contains("vocabularies"), "{e}");
    // class names, for readers without the spec
    let named = ModelSpec::parse(crate::encoding::tests::PLANT, "<plant>").unwrap();
    let meta = BlobMeta::new(&named, BlobRole::Update);
    assert_eq!(meta.names["classes"], r#"["ok","rework","scrap"]"#);
}

#[test]
fn refused_category_counts_name_the_column() {
    let s = spec();
    let mut sums = FeatureSums::zeros(s.stats_width());
    sums.count = 1;
    sums.categories
        .insert("temp".into(), BTreeMap::from([("x".to_string(), 1)]));
    assert!(
        sums.validate_found(&s)
            .unwrap_err()
            .to_string()
            .contains("\"temp\"")
    );
    sums.categories.clear();
    sums.categories.insert(
        "supplier".into(),
        BTreeMap::from([(" padded".to_string(), 1)]),
    );
    assert!(
        sums.validate_found(&s)
            .unwrap_err()
            .to_string()
            .contains("not a category name")
    );
    sums.categories
        .insert("supplier".into(), BTreeMap::from([("a".to_string(), 0)]));
    assert!(sums.validate_found(&s).is_err());
}

#[test]
fn the_widest_vocabulary_fits_the_header_cap() {
    let s = ModelSpec::parse(
        &SPEC
            .replacen("discover = 3", "discover = 1000", 1)
            .replacen("min_count = 2", "min_count = 1", 1),
        "<wide>",
    )
    .unwrap();
    // 1000 names of 256 bytes, each escaped as much as JSON can (control characters, quotes)
    let names: Vec<String> = (0..1000)
        .map(|i| format!("{i:04}{}", "\u{1}\"\\".repeat(84)))
        .collect();
    assert!(names.iter().all(|n| n.len() == 256));
    let r = s
        .with_vocabularies(&BTreeMap::from([
            ("supplier".to_string(), names),
            ("line".to_string(), vec![]),
        ]))
        .unwrap();
    let w = Weights::initial(&r, &crate::stats::Normalization::identity(r.input_width()));
    let bytes = Model::Single(w).encode(&r, BlobRole::Initial);
    assert_eq!(blob::spec_for(&bytes, &s, model_limits(&s)).unwrap(), r);
    assert!(Model::decode(&bytes, &r, BlobRole::Initial).is_ok());
}

const MEDIAN: &str = r#"
format = 1
name = "median"
[task]
kind = "regression"
target = "y"
features = ["temp", "speed"]
[task.columns.temp]
missing = "median"
indicator = true
[model]
hidden = [4]
[training]
learning_rate = 0.01
local_epochs = 1
batch_size = 8
seed = 1
"#;

#[test]
fn medians_are_found_from_the_plants_histograms_and_fill_blanks() {
    let dir = tempfile::tempdir().unwrap();
    let s = ModelSpec::parse(MEDIAN, "<median>").unwrap();
    assert!(s.finds() && !s.discovers());
    assert_eq!(s.may_be_missing(), [true, false, false]);
    // plant A: temps 1, 2, 100, blank; plant B: 3, 4, blank, 1000 → pooled 1 2 3 4 100 1000
    let a = write(
        dir.path(),
        "a.csv",
        "temp,speed,y\n1,1,1\n2,1,1\n100,1,1\n,1,1\n",
    );
    let b = write(
        dir.path(),
        "b.csv",
        "temp,speed,y\n3,1,1\n4,1,1\n,1,1\n1000,1,1\n",
    );
    let sums = |p: &Path| {
        let (ds, _) = load(p, &s).unwrap();
        assert!(
            ds.row(3)[0].is_nan() || ds.row(2)[0].is_nan(),
            "a blank is left out"
        );
        FeatureSums::of_dataset(&s, &ds)
    };
    let (sa, sb) = (sums(&a), sums(&b));
    assert_eq!(sa.histograms["temp"].values().sum::<u64>(), 3);
    assert_eq!(sa.validate(s.stats_width()), Ok(()));
    assert_eq!(sa.validate_found(&s), Ok(()));
    let mut merged = sa.clone();
    merged.merge(&sb).unwrap();
    let norm = merged.normalization_for(&s).unwrap();
    // the lower median of 1 2 3 4 100 1000 is 3, within 1 %
    let m = norm.medians["temp"];
    assert!((m - 3.0).abs() <= 0.03, "median {m}");
    // the mean and spread are of the present values only
    assert!((f64::from(norm.mean[0]) - 1110.0 / 6.0).abs() < 1e-3);
    // the plants then fill blanks with it; the model carries it
    let r = s.resolved(&norm).unwrap();
    assert_eq!(r.id(), s.id());
    let (ds, _) = load(&b, &r).unwrap();
    assert_eq!(ds.row(2)[..2], [m as f32, 1.0], "filled, indicator set");
    let w = Weights::initial(&r, &norm);
    let bytes = Model::Single(w).encode(&r, BlobRole::Initial);
    assert_eq!(blob::spec_for(&bytes, &s, model_limits(&s)).unwrap(), r);
    // the simulation fills the same way
    let (raw, _) = load(&b, &s).unwrap();
    same(&recode(&s, &r, &raw), &ds);
    // a histogram that does not count the present values is refused, naming the column
    let mut lying = sa.clone();
    lying.histograms.get_mut("temp").unwrap().insert(0, 5);
    let e = lying.validate_found(&s).unwrap_err().to_string();
    assert!(e.contains("\"temp\"") && e.contains("3 present"), "{e}");
    let mut none = sa.clone();
    none.histograms.clear();
    assert!(none.validate_found(&s).is_err());
    let mut stray = sa;
    stray
        .histograms
        .insert("speed".into(), BTreeMap::from([(1, 1)]));
    assert!(
        stray
            .validate_found(&s)
            .unwrap_err()
            .to_string()
            .contains("\"speed\"")
    );
    // median is for numeric columns
    let e = ModelSpec::parse(
        &MEDIAN.replace("missing = \"median\"", "missing = \"median\"\ndiscover = 2"),
        "<t>",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"median\" is for numeric columns"), "{e}");
}

#[test]
fn a_plant_cannot_claim_more_named_rows_than_it_has() {
    let s = spec();
    let dir = tempfile::tempdir().unwrap();
    let mut sums = live_sums(&s, &write(dir.path(), "a.csv", PLANT_A));
    assert_eq!(sums.validate_found(&s), Ok(()));
    // 4 of 5 rows hold a supplier: one more named row than that is refused
    sums.categories
        .get_mut("supplier")
        .unwrap()
        .insert("EVIL".into(), 1);
    let e = sums.validate_found(&s).unwrap_err().to_string();
    assert!(
        e.contains("\"supplier\"") && e.contains("4 training rows"),
        "{e}"
    );
    // a blank marker is never a found name (it would turn other plants' blanks into it)
    sums.categories
        .insert("line".into(), BTreeMap::from([("NA".to_string(), 1)]));
    sums.categories.get_mut("supplier").unwrap().remove("EVIL");
    assert!(
        sums.validate_found(&s)
            .unwrap_err()
            .to_string()
            .contains("\"NA\"")
    );
    let bad = BTreeMap::from([
        ("supplier".to_string(), vec!["?".to_string()]),
        ("line".to_string(), vec![]),
    ]);
    assert!(s.with_vocabularies(&bad).unwrap_err().contains("blank"));
}

#[test]
fn a_cell_too_long_to_be_a_category_is_other_not_a_refusal() {
    let s = spec();
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(300);
    let path = write(
        dir.path(),
        "a.csv",
        &format!("temp,supplier,line,y\n1,{long},L1,1\n2,acme,L1,2\n"),
    );
    let sums = live_sums(&s, &path);
    assert_eq!(
        sums.categories["supplier"],
        BTreeMap::from([("acme".to_string(), 1)])
    );
    assert_eq!(sums.validate_found(&s), Ok(()));
}

#[test]
fn blanks_counted_as_other_are_in_the_other_share() {
    // line: L1 and three blanks (`missing = "other"`): shares 1/4 L1, 3/4 other
    let s = spec();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.csv",
        "temp,supplier,line,y\n1,acme,L1,1\n2,acme,,2\n3,acme,,3\n4,acme,,4\n",
    );
    let norm = live_sums(&s, &path).normalization_for(&s).unwrap();
    assert_eq!(norm.vocabularies["line"], ["L1"]);
    let line = &norm.mean[6..9];
    assert!(
        (line[0] - 0.25).abs() < 1e-6 && line[1] == 0.0 && (line[2] - 0.75).abs() < 1e-6,
        "{line:?}"
    );
    let sd = (0.25f32 * 0.75).sqrt();
    assert!((norm.std[6] - sd).abs() < 1e-6 && (norm.std[8] - sd).abs() < 1e-6);
}

#[test]
fn blob_names_match_as_json_whatever_the_spacing() {
    let s = ModelSpec::parse(crate::encoding::tests::PLANT, "<plant>").unwrap();
    let w = Weights::initial(&s, &crate::stats::Normalization::identity(s.input_width()));
    let bytes = blob::encode(&w, &BlobMeta::new(&s, BlobRole::Merged));
    // as Python's json.dumps writes it
    let spaced = blob::tests::rewrite_header(&bytes, |h| {
        h["__metadata__"]["classes"] = serde_json::json!("[\"ok\", \"rework\", \"scrap\"]");
    });
    assert!(blob::decode(&spaced, &s, BlobRole::Merged).is_ok());
    let other = blob::tests::rewrite_header(&bytes, |h| {
        h["__metadata__"]["classes"] = serde_json::json!("[\"ok\", \"scrap\", \"rework\"]");
    });
    assert!(blob::decode(&other, &s, BlobRole::Merged).is_err());
}
