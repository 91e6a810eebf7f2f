use super::*;
use shared_model::data::load;
use shared_model::encoding::Missing;
use shared_model::plantdata::{PlantData, Target};
use shared_model::spec::TaskKind;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_plant_export_is_inferred_column_by_column_and_then_loads() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(&dir, "plant.csv", &PlantData::default().csv(Target::Grade));
    let inf = infer_spec(&csv, "grade", None, DEFAULT_MIN_COUNT, false).unwrap();
    let s = &inf.spec;
    assert_eq!(s.task.kind, TaskKind::Multiclass { classes: 3 });
    assert_eq!(
        s.task.class_names.as_deref(),
        Some(&["ok".to_string(), "rework".into(), "scrap".into()][..])
    );
    // the batch id is an identifier: left out, and said
    assert!(!s.task.features.contains(&"batch_id".to_string()));
    assert!(
        inf.said
            .iter()
            .any(|l| l.contains("\"batch_id\"") && l.contains("identifier"))
    );
    let line = &s.task.columns["line"];
    assert_eq!(line.categories.as_ref().unwrap().len(), 4);
    assert_eq!(line.missing, Missing::Error);
    let temp = &s.task.columns["temp_c"];
    assert!(temp.categories.is_none() && temp.missing == Missing::Mean && temp.indicator);
    assert!(
        s.task.columns["humidity_pct"].indicator,
        "NA cells are blanks"
    );
    assert!(
        !s.task.columns.contains_key("speed_mpm"),
        "a clean number is plain"
    );
    // the commented TOML is the spec
    assert!(
        inf.toml
            .starts_with("# Inferred by `coordinator spec init`")
    );
    let again = ModelSpec::parse(&inf.toml, "<toml>").unwrap();
    assert_eq!(again.id(), s.id());
    // and the data loads with it: every row, blanks filled
    let (d, report) = load(&csv, s).unwrap();
    assert_eq!(d.len(), 900);
    assert_eq!(d.width, s.input_width());
    assert!(report.counts.filled.iter().sum::<u64>() > 30, "{report}");
}

#[test]
fn with_discover_no_category_name_is_written_into_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let text = PlantData::default().csv(Target::Grade);
    let csv = write(&dir, "plant.csv", &text);
    let inf = infer_spec(&csv, "grade", None, 7, true).unwrap();
    for name in shared_model::plantdata::SUPPLIERS {
        assert!(!inf.toml.contains(name), "{name} in\n{}", inf.toml);
    }
    let line = &inf.spec.task.columns["line"];
    assert!(line.categories.is_none());
    let d = line.discover.unwrap();
    assert_eq!(
        (d.slots, d.min_count),
        (8, 7),
        "twice the 4 names seen, at least 8"
    );
    assert!(
        inf.said
            .iter()
            .any(|l| l.contains("\"supplier\"") && l.contains("found in the statistics step"))
    );
    // the class names of the target are still declared
    assert!(inf.spec.task.class_names.is_some());
    let again = ModelSpec::parse(&inf.toml, "<toml>").unwrap();
    assert_eq!(again.id(), inf.spec.id());
}

#[test]
fn rare_names_are_other_and_a_binary_target_of_names_says_its_positive_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("shift,temp,result\n");
    for i in 0..40 {
        let shift = ["early", "late", "night"][i % 3];
        let shift = if i == 7 { "weekend" } else { shift };
        text += &format!("{shift},{},{}\n", 20 + i, ["pass", "fail"][i % 2]);
    }
    let csv = write(&dir, "b.csv", &text);
    let inf = infer_spec(&csv, "result", None, 5, false).unwrap();
    assert_eq!(inf.spec.task.kind, TaskKind::Binary);
    assert_eq!(inf.spec.class_name(1), "pass");
    assert!(
        inf.said
            .iter()
            .any(|l| l.contains("\"pass\" the positive class"))
    );
    let cats = inf.spec.task.columns["shift"].categories.clone().unwrap();
    assert_eq!(cats.len(), 3, "weekend is seen once: other");
    assert!(
        inf.said
            .iter()
            .any(|l| l.contains("1 names seen fewer than 5 times"))
    );
    let e = infer_spec(&csv, "result", Some(Kind::Regression), 5, false).unwrap_err();
    assert!(
        format!("{e:#}").contains("--kind regression needs numbers"),
        "{e:#}"
    );
}

#[test]
fn a_few_text_cells_among_numbers_are_refused_naming_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("temp,y\n");
    for i in 0..30 {
        let t = if i == 11 {
            "hot".to_string()
        } else {
            format!("{}", 20 + i)
        };
        text += &format!("{t},{}\n", i % 2);
    }
    let csv = write(&dir, "t.csv", &text);
    let e = format!("{:#}", infer_spec(&csv, "y", None, 5, false).unwrap_err());
    assert!(
        e.contains("column \"temp\"") && e.contains("line 13: \"hot\""),
        "{e}"
    );
}

#[test]
fn blank_targets_are_counted_and_left_out_never_filled() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("x,y\n");
    for i in 0..20 {
        let y = if i == 4 {
            String::new()
        } else {
            format!("{}", i % 2)
        };
        text += &format!("{i},{y}\n");
    }
    let csv = write(&dir, "y.csv", &text);
    let inf = infer_spec(&csv, "y", None, 5, false).unwrap();
    assert!(
        inf.said
            .iter()
            .any(|l| l.contains("1 of 20 rows are blank"))
    );
    let (d, report) = load(&csv, &inf.spec).unwrap();
    assert_eq!((d.len(), report.blank_target), (19, 1));
    assert!(
        report
            .to_string()
            .contains("1 rows left out: the target is blank")
    );
}

#[test]
fn a_numeric_target_with_a_stray_text_cell_is_refused_not_read_as_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("x,y\n");
    for i in 0..30 {
        let y = if i == 3 {
            "n/a?".to_string()
        } else {
            format!("{}.5", 100 + i)
        };
        text += &format!("{i},{y}\n");
    }
    let csv = write(&dir, "y.csv", &text);
    let e = format!("{:#}", infer_spec(&csv, "y", None, 5, false).unwrap_err());
    assert!(
        e.contains("is ambiguous") && e.contains("line 5: \"n/a?\""),
        "{e}"
    );
}
