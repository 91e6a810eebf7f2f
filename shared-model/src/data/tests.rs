//! CSV loading, splits and their errors.

use super::*;
use crate::spec::tests::SMALL;

fn spec() -> ModelSpec {
    ModelSpec::parse(SMALL, "<t>").unwrap()
}

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.csv");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn loads_columns_by_name_in_any_order() {
    let (_d, path) = write("id,c,y,a,b\nr1,3,1,1,2\nr2, 6 ,0,4,5\n");
    let ds = load_csv(&path, &spec()).unwrap();
    assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ds.targets, vec![1.0, 0.0]);
    assert_eq!(ds.row(1), &[4.0, 5.0, 6.0]);
}

#[test]
fn the_real_wdbc_file_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = ModelSpec::from_file(&root.join("data/wdbc.toml")).unwrap();
    let ds = load_csv(&root.join("data/wdbc.csv"), &spec).unwrap();
    assert_eq!(ds.len(), 569);
    assert_eq!(ds.targets.iter().filter(|&&t| t == 1.0).count(), 212);
    assert!((ds.row(0)[0] - 17.99).abs() < 1e-5);
}

fn err(text: &str) -> String {
    let (_d, path) = write(text);
    load_csv(&path, &spec()).unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_column() {
    assert!(
        err("").contains("site.csv: the file is empty"),
        "{}",
        err("")
    );
    assert!(err("a,b,c,y\n").contains("no data rows"));
    let e = err("a,b,y\n1,2,0\n");
    assert!(
        e.contains("line 1: column \"c\" is missing from the header (the header has: a, b, y)"),
        "{e}"
    );
    let e = err("a,b,c,y\n1,2,3,0\n1,2,0\n");
    assert!(
        e.contains("site.csv: line 3: expected 4 fields like the header, found 3"),
        "{e}"
    );
    let e = err("a,b,c,y\n1,2,3,0\n1,x2,3,0\n");
    assert!(
        e.contains("line 3: column \"b\": expected a number, found \"x2\""),
        "{e}"
    );
    let e = err("a,b,c,y\n1,2,-inf,0\n");
    assert!(
        e.contains("line 2: column \"c\": expected a finite number, found \"-inf\""),
        "{e}"
    );
    // NaN, NA and empty cells are blanks: refused unless the task says how to fill them
    for blank in ["NaN", "NA", ""] {
        let e = err(&format!("a,b,c,y\n1,2,3,0\n1,2,{blank},0\n"));
        assert!(
            e.contains("line 3: column \"c\": the cell is blank") && e.contains("task.missing"),
            "{e}"
        );
    }
    let e = err("a,b,c,y\n1,2,3,2\n");
    assert!(
        e.contains("line 2: column \"y\": label \"2\" is not a class of this task (0 or 1)"),
        "{e}"
    );
    let e = err("a,b,c,y\n1,2,3,0.5\n");
    assert!(e.contains("label \"0.5\""), "{e}");
    let e = err("a,b,c,y,a\n1,2,3,0,1\n");
    assert!(e.contains("column \"a\" appears more than once"), "{e}");
    let e = err("a,b,c,y\n1,2,3,0\n1,small,3,0\n");
    assert!(
        e.contains("line 3: column \"b\": expected a number, found \"small\" (a column of names or codes is declared categorical: [task.columns.\"b\"] categories"),
        "{e}"
    );
    let missing = load_csv(Path::new("/nonexistent/x.csv"), &spec())
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("/nonexistent/x.csv: cannot read"),
        "{missing}"
    );
}

#[test]
fn line_numbers_are_right_in_crlf_files() {
    let e = err("a,b,c,y\r\n1,2,3,0\r\n1,2,x,0\r\n");
    assert!(e.contains("line 3: column \"c\""), "{e}");
    let e = err("a,b,c,y\r\n1,2,3,7\r\n");
    assert!(e.contains("line 2: column \"y\": label \"7\""), "{e}");
}

#[test]
fn multiclass_and_regression_targets() {
    let multi = ModelSpec::parse(
        &SMALL.replace("kind = \"binary\"", "kind = \"multiclass\"\nclasses = 3"),
        "<t>",
    )
    .unwrap();
    let (_d, path) = write("a,b,c,y\n1,2,3,2\n1,2,3,0\n");
    assert_eq!(load_csv(&path, &multi).unwrap().targets, vec![2.0, 0.0]);
    let (_d2, path) = write("a,b,c,y\n1,2,3,3\n");
    let e = load_csv(&path, &multi).unwrap_err().to_string();
    assert!(e.contains("an integer from 0 to 2"), "{e}");
    let reg = ModelSpec::parse(
        &SMALL.replace("kind = \"binary\"", "kind = \"regression\""),
        "<t>",
    )
    .unwrap();
    let (_d3, path) = write("a,b,c,y\n1,2,3,-2.5\n1,2,3,inf\n");
    let e = load_csv(&path, &reg).unwrap_err().to_string();
    assert!(
        e.contains("line 3: column \"y\": expected a number, found \"inf\""),
        "{e}"
    );
}

#[test]
fn split_is_deterministic_stratified_and_complete() {
    let n = 200;
    let ds = Dataset {
        width: 1,
        features: (0..n).map(|i| i as f32).collect(),
        targets: (0..n).map(|i| if i % 4 == 0 { 1.0 } else { 0.0 }).collect(),
    };
    let f = SplitFractions::default();
    let a = ds.split(TaskKind::Binary, f, 9);
    assert_eq!(a, ds.split(TaskKind::Binary, f, 9));
    assert_ne!(a, ds.split(TaskKind::Binary, f, 10));
    assert_eq!(a.train.len() + a.validation.len() + a.holdout.len(), n);
    let pos = |d: &Dataset| d.targets.iter().filter(|&&t| t == 1.0).count();
    assert_eq!(pos(&a.holdout), 8); // 15 % of 50 positives, rounded
    assert_eq!(a.holdout.len(), 31); // 7.5 → 8 positives, 22.5 → 23 negatives
    let mut all: Vec<f32> = [&a.train, &a.validation, &a.holdout]
        .iter()
        .flat_map(|d| d.features.clone())
        .collect();
    all.sort_by(f32::total_cmp);
    assert_eq!(all, ds.features);
    // Consuming the rows gives the same parts, for every kind of task.
    let wide = Dataset {
        width: 3,
        features: (0..3 * n).map(|i| (i as f32 * 0.7).sin()).collect(),
        targets: (0..n).map(|i| (i % 3) as f32).collect(),
    };
    for kind in [
        TaskKind::Binary,
        TaskKind::Multiclass { classes: 3 },
        TaskKind::Regression,
    ] {
        let d = if kind == TaskKind::Binary { &ds } else { &wide };
        assert_eq!(
            d.clone().into_split(kind, f, 4),
            d.split(kind, f, 4),
            "{kind:?}"
        );
    }
}

#[test]
fn written_csv_loads_back() {
    let spec = spec();
    let ds = Dataset {
        width: 3,
        features: vec![1.5, 2.0, -3.25, 4.0, 5.0, 6.0],
        targets: vec![1.0, 0.0],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.csv");
    ds.write_csv(&path, &spec).unwrap();
    assert_eq!(load_csv(&path, &spec).unwrap(), ds);
}

#[test]
fn a_byte_order_mark_before_the_header_is_dropped() {
    let (_d, path) = write("\u{feff}a,b,c,y\n1,2,3,1\n4,5,6,0\n");
    let ds = load_csv(&path, &spec()).unwrap();
    assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(header(&path).unwrap(), ["a", "b", "c", "y"]);
}

#[test]
fn a_file_separated_by_semicolons_or_tabs_is_named_so() {
    for (sep, name) in [(";", "semicolons"), ("\t", "tabs")] {
        let text = ["a", "b", "c", "y"].join(sep) + "\n" + &["1", "2", "3", "1"].join(sep) + "\n";
        let (_d, path) = write(&text);
        let e = load_csv(&path, &spec()).unwrap_err().to_string();
        assert!(
            e.contains("line 1: column \"a\" is missing")
                && e.contains(&format!("the file looks separated by {name}")),
            "{e}"
        );
    }
    let (_d, path) = write("x,y\n1,1\n");
    let e = load_csv(&path, &spec()).unwrap_err().to_string();
    assert!(!e.contains("looks separated"), "{e}");
}

#[test]
fn class_names_blank_targets_and_drop_row_are_loaded_and_reported() {
    let named = ModelSpec::parse(
        &SMALL.replace(
            "kind = \"binary\"",
            "kind = \"binary\"\nclasses = [\"pass\", \"fail\"]\nmissing = \"drop-row\"",
        ),
        "<t>",
    )
    .unwrap();
    let (_d, path) = write("a,b,c,y\n1,2,3,fail\n4,5,6,\n7,,9,pass\n1,1,1,NA\n2,2,2,pass\n");
    let (ds, report) = load(&path, &named).unwrap();
    assert_eq!(ds.targets, vec![1.0, 0.0]);
    assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 2.0, 2.0, 2.0]);
    assert_eq!((report.read, report.kept, report.blank_target), (5, 2, 2));
    assert_eq!(report.counts.dropped, vec![0, 1, 0]);
    assert_eq!(
        report.to_string(),
        "2 of 5 rows kept; 2 rows left out: the target is blank; 1 rows left out: \"b\" is blank (missing = \"drop-row\")"
    );
    let (_d2, path) = write("a,b,c,y\n1,2,3,maybe\n");
    let e = load_csv(&path, &named).unwrap_err().to_string();
    assert!(
        e.contains("label \"maybe\" is not a class of this task (one of \"pass\", \"fail\")"),
        "{e}"
    );
    let (_d3, path) = write("a,b,c,y\n1,2,3,\n");
    let e = load_csv(&path, &named).unwrap_err().to_string();
    assert!(
        e.contains("all 1 data rows were left out: 1 rows left out: the target is blank"),
        "{e}"
    );
}

#[test]
fn records_are_copied_as_written_to_each_part() {
    let (d, path) = write("id,a,b,c,y\nr1,1,2,3,1\n\"r,2\",4, 5 ,6,0\nr3,7,8,9,1\n");
    let (_, report) = load(&path, &spec()).unwrap();
    let dests = [d.path().join("p1.csv"), d.path().join("p2.csv")];
    copy_records(
        &path,
        &[
            vec![report.offsets[1]],
            vec![report.offsets[0], report.offsets[2]],
        ],
        &dests,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&dests[0]).unwrap(),
        "id,a,b,c,y\n\"r,2\",4,5,6,0\n"
    );
    assert_eq!(
        std::fs::read_to_string(&dests[1]).unwrap(),
        "id,a,b,c,y\nr1,1,2,3,1\nr3,7,8,9,1\n"
    );
}

#[test]
fn splitting_a_file_onto_itself_is_refused_before_a_byte_is_written() {
    let (_d, path) = write("a,b,c,y\n1,2,3,1\n");
    let before = std::fs::read_to_string(&path).unwrap();
    let e = copy_records(&path, &[vec![0]], std::slice::from_ref(&path)).unwrap_err();
    assert!(e.to_string().contains("is the file being split"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn the_profiler_names_the_right_lines_in_crlf_files() {
    let (_d, path) = write("t,y\r\n1,0\r\n2,1\r\nhot,0\r\n");
    let p = crate::data::profile(&path, Some("y")).unwrap();
    assert_eq!(p.columns[0].text_lines, vec![(4, "hot".to_string())]);
    assert_eq!(
        p.target_numbers.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}
