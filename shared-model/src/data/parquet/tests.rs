//! A Parquet file loads exactly as the CSV export of the same table, errors included.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::data::{load, read_encoded};
use crate::spec::ModelSpec;

const SPEC: &str = r#"
format = 1
name = "pq"
[task]
kind = "binary"
target = "y"
features = ["a", "b"]
[task.columns.a]
missing = "mean"
indicator = true
[task.columns.b]
categories = ["x", "y"]
missing = "other"
[model]
hidden = [4]
[training]
learning_rate = 0.01
local_epochs = 1
batch_size = 8
seed = 1
"#;

/// Column a (double, nulls), b (UTF-8 text, nulls), y (int64), written as `codec`.
fn write(
    path: &std::path::Path,
    a: &[Option<f64>],
    b: &[Option<&str>],
    y: &[i64],
    codec: Compression,
) {
    let schema = Arc::new(
        parse_message_type(
            "message t { optional double a; optional binary b (UTF8); required int64 y; }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let levels = |present: Vec<bool>| present.into_iter().map(i16::from).collect::<Vec<_>>();
    let mut c = rg.next_column().unwrap().unwrap();
    let av: Vec<f64> = a.iter().flatten().copied().collect();
    let al = levels(a.iter().map(Option::is_some).collect());
    c.typed::<DoubleType>()
        .write_batch(&av, Some(&al), None)
        .unwrap();
    c.close().unwrap();
    let mut c = rg.next_column().unwrap().unwrap();
    let bv: Vec<ByteArray> = b.iter().flatten().map(|s| ByteArray::from(*s)).collect();
    let bl = levels(b.iter().map(Option::is_some).collect());
    c.typed::<ByteArrayType>()
        .write_batch(&bv, Some(&bl), None)
        .unwrap();
    c.close().unwrap();
    let mut c = rg.next_column().unwrap().unwrap();
    c.typed::<Int64Type>().write_batch(y, None, None).unwrap();
    c.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn a_parquet_file_loads_as_its_csv_export_does() {
    let spec = ModelSpec::parse(SPEC, "pq.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = [Some(1.5), None, Some(-2.25), Some(1e-3)];
    let b = [Some("x"), Some(" y "), None, Some("z")];
    let y = [1, 0, 0, 1];
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "a,b,y\n1.5,x,1\n,y,0\n-2.25,,0\n0.001,z,1\n").unwrap();
    let (want, want_report) = load(&csv, &spec).unwrap();
    for codec in [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(Default::default()),
        Compression::GZIP(Default::default()),
    ] {
        let pq = dir.path().join("t.parquet");
        write(&pq, &a, &b, &y, codec);
        let (got, report) = load(&pq, &spec).unwrap();
        // Bit for bit (a blank filled with the mean is NaN, which equals nothing).
        let bits = |d: &crate::data::Dataset| -> Vec<u32> {
            d.features.iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&got), bits(&want), "{codec:?}");
        assert_eq!((got.width, &got.targets), (want.width, &want.targets));
        assert_eq!(report.counts, want_report.counts, "{codec:?}");
        assert_eq!((report.read, report.kept), (4, 4));
        // Prediction reads it too, with an extra column as text.
        let (table, _) = read_encoded(&pq, &spec, true, Some("y")).unwrap();
        assert_eq!(table.targets, ["1", "0", "0", "1"]);
        assert_eq!(table.line(2), 4, "row 3 is line 4 of its CSV export");
        // spec init's profile sees the same columns, counts, values and lines.
        assert_eq!(
            crate::data::profile(&pq, Some("y")).unwrap(),
            crate::data::profile(&csv, Some("y")).unwrap()
        );
        // What reads CSV records only says so.
        let e = crate::data::header(&pq).unwrap_err().to_string();
        assert!(e.contains("a Parquet file: this command reads CSV"), "{e}");
        // `data split` copies its rows to CSV files that load as those rows do
        let parts = [
            vec![report.offsets[0], report.offsets[3]],
            vec![report.offsets[1], report.offsets[2]],
        ];
        let dests = [dir.path().join("p1.csv"), dir.path().join("p2.csv")];
        crate::data::copy_records(&pq, &parts, &dests).unwrap();
        for (d, rows) in dests.iter().zip([[0, 3], [1, 2]]) {
            let (part, _) = load(d, &spec).unwrap();
            assert_eq!(bits(&part), bits(&got.subset(&rows)), "{codec:?}");
            assert_eq!(part.targets, got.subset(&rows).targets);
        }
    }
}

#[test]
fn a_bad_cell_is_named_as_in_the_csv_export() {
    let spec = ModelSpec::parse(SPEC, "pq.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("bad.parquet");
    // A label that is not 0/1 on row 2.
    write(
        &pq,
        &[Some(1.0), Some(2.0)],
        &[Some("x"), Some("x")],
        &[1, 7],
        Compression::SNAPPY,
    );
    let e = load(&pq, &spec).unwrap_err().to_string();
    assert!(e.contains("bad.parquet") && e.contains("line 3"), "{e}");
    assert!(e.contains("\"y\"") && e.contains("\"7\""), "{e}");
    // A column the spec needs and the file lacks is named with the file's columns.
    let other = ModelSpec::parse(
        &SPEC.replace("[\"a\", \"b\"]", "[\"a\", \"c\"]").replace(
            "[task.columns.b]\ncategories = [\"x\", \"y\"]\nmissing = \"other\"\n",
            "",
        ),
        "pq.toml",
    )
    .unwrap();
    let e = load(&pq, &other).unwrap_err().to_string();
    assert!(e.contains("\"c\"") && e.contains("a, b, y"), "{e}");
    // Not Parquet after all (magic at the start only): read as CSV, refused as such.
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "PAR1,b,y\n").unwrap();
    assert!(load(&fake, &spec).is_err());
}
