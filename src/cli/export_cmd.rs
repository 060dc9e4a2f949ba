//! `swarmscan export peers|contacts|discovery --format csv|jsonl|parquet [--out FILE]`.
//!
//! Rows stream from SQLite to the writer one at a time (Parquet: one row group of
//! [`ROW_GROUP`] rows at a time), so memory stays bounded for any database size. A progress
//! bar is drawn on stderr when it is a terminal. With `--out`, the file is written under a
//! temporary name next to it and renamed when complete: a failed export leaves no partial file
//! under the asked name.

use crate::config::ConfigArgs;
use crate::store::export::{ColumnType, ExportTable, Schema, Value};
use crate::store::{Store, StoreError};
use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;

/// Rows per Parquet row group: the only rows held in memory.
pub const ROW_GROUP: usize = 65_536;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header line (RFC 4180 quoting; empty = no value).
    Csv,
    /// One JSON object per line (null = no value).
    Jsonl,
    /// Apache Parquet (Snappy-compressed, every column optional).
    Parquet,
}

/// Arguments of `swarmscan export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// What to export.
    #[arg(value_enum)]
    pub table: ExportTable,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Configuration (the database path comes from here).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs `swarmscan export`; returns the exit code.
pub fn run(args: &ExportArgs) -> i32 {
    let store = match super::report_cmd::open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if args.out.is_none() && args.format == Format::Parquet && std::io::stdout().is_terminal() {
        eprintln!(
            "swarmscan: export: Parquet is binary; give --out FILE or redirect standard output"
        );
        return 2;
    }
    match export(&store, args) {
        Ok(rows) => {
            if let Some(out) = &args.out {
                eprintln!("swarmscan: exported {rows} rows to {}", out.display());
            }
            0
        }
        Err(e) => {
            eprintln!("swarmscan: export: {e}");
            1
        }
    }
}

/// An export failure: the database or the output.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("{what}: {source}")]
    Write {
        /// The output.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The Parquet encoder failed.
    #[error("{what}: parquet: {source}")]
    Parquet {
        /// The output.
        what: String,
        /// The error.
        source: parquet::errors::ParquetError,
    },
}

/// Exports `args.table` from `store`; returns the rows written.
pub fn export(store: &Store, args: &ExportArgs) -> Result<u64, ExportError> {
    let what = args.out.as_ref().map_or_else(
        || "standard output".to_string(),
        |p| p.display().to_string(),
    );
    let write_err = |source| ExportError::Write {
        what: what.clone(),
        source,
    };
    let total = store.export_rows(args.table)?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (sink, temp): (Box<dyn Write + Send>, Option<tempfile::NamedTempFile>) = match &args.out {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            // Readable like any file the user writes (the umask applies), not 0600.
            let temp = tempfile::Builder::new()
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .prefix(".swarmscan-export-")
                .tempfile_in(dir)
                .map_err(write_err)?;
            let file = temp.reopen().map_err(write_err)?;
            (Box::new(std::io::BufWriter::new(file)), Some(temp))
        }
        None => (Box::new(std::io::BufWriter::new(std::io::stdout())), None),
    };
    let schema = store.export_schema(args.table)?;
    let rows = match args.format {
        Format::Csv | Format::Jsonl => {
            let mut sink = sink;
            let mut failed = None;
            let mut rows = 0u64;
            if args.format == Format::Csv {
                let header: Vec<String> = schema.iter().map(|(n, _)| csv_cell(n)).collect();
                writeln!(sink, "{}", header.join(",")).map_err(write_err)?;
            }
            store.for_each_export_row(args.table, |row| {
                let line = match args.format {
                    Format::Csv => csv_line(row),
                    _ => json_line(&schema, row),
                };
                if let Err(e) = writeln!(sink, "{line}") {
                    failed = Some(e);
                    return false;
                }
                rows += 1;
                if rows % 4096 == 0 {
                    bar.set_position(rows);
                }
                true
            })?;
            if let Some(e) = failed {
                // A closed pipe (`| head`) is the reader's choice, not an error.
                if e.kind() == std::io::ErrorKind::BrokenPipe && args.out.is_none() {
                    return Ok(rows);
                }
                return Err(write_err(e));
            }
            sink.flush().map_err(write_err)?;
            rows
        }
        Format::Parquet => {
            write_parquet(store, args.table, &schema, sink, &bar).map_err(|e| match e {
                ParquetFailure::Store(e) => ExportError::Store(e),
                ParquetFailure::Parquet(source) => ExportError::Parquet {
                    what: what.clone(),
                    source,
                },
            })?
        }
    };
    bar.finish_and_clear();
    if let (Some(temp), Some(path)) = (temp, &args.out) {
        temp.persist(path).map_err(|e| write_err(e.error))?;
    }
    Ok(rows)
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(row: &[Value]) -> String {
    let cells: Vec<String> = row
        .iter()
        .map(|v| match v {
            Value::Null => String::new(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(t) => csv_cell(t),
        })
        .collect();
    cells.join(",")
}

fn json_line(schema: &Schema, row: &[Value]) -> String {
    // Written by hand to keep the column order of the schema.
    let mut line = String::from("{");
    for (i, ((name, kind), v)) in schema.iter().zip(row).enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&serde_json::Value::from(name.as_str()).to_string());
        line.push(':');
        let value = match (v, kind) {
            (Value::Null, _) => serde_json::Value::Null,
            (Value::Int(i), ColumnType::Bool) => serde_json::Value::from(*i != 0),
            (Value::Int(i), _) => serde_json::Value::from(*i),
            // NaN and infinities have no JSON form.
            (Value::Float(f), _) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            (Value::Text(t), _) => serde_json::Value::from(t.as_str()),
        };
        line.push_str(&value.to_string());
    }
    line.push('}');
    line
}

enum ParquetFailure {
    Store(StoreError),
    Parquet(parquet::errors::ParquetError),
}

/// One column's values of the current row group, with definition levels (0 = null).
enum Column {
    Int(Vec<i64>, Vec<i16>),
    Float(Vec<f64>, Vec<i16>),
    Text(Vec<parquet::data_type::ByteArray>, Vec<i16>),
    Bool(Vec<bool>, Vec<i16>),
}

impl Column {
    fn new(kind: ColumnType) -> Column {
        match kind {
            ColumnType::Int => Column::Int(Vec::new(), Vec::new()),
            ColumnType::Float => Column::Float(Vec::new(), Vec::new()),
            ColumnType::Text => Column::Text(Vec::new(), Vec::new()),
            ColumnType::Bool => Column::Bool(Vec::new(), Vec::new()),
        }
    }

    fn push(&mut self, v: &Value) {
        match (self, v) {
            (Column::Int(vals, defs), Value::Int(i)) => {
                vals.push(*i);
                defs.push(1);
            }
            (Column::Float(vals, defs), Value::Float(f)) => {
                vals.push(*f);
                defs.push(1);
            }
            (Column::Text(vals, defs), Value::Text(t)) => {
                vals.push(t.as_str().into());
                defs.push(1);
            }
            (Column::Bool(vals, defs), Value::Int(i)) => {
                vals.push(*i != 0);
                defs.push(1);
            }
            (
                Column::Int(_, defs)
                | Column::Float(_, defs)
                | Column::Text(_, defs)
                | Column::Bool(_, defs),
                _,
            ) => {
                // Null (the store converts every value to its column's type).
                defs.push(0);
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Column::Int(v, d) => {
                v.clear();
                d.clear()
            }
            Column::Float(v, d) => {
                v.clear();
                d.clear()
            }
            Column::Text(v, d) => {
                v.clear();
                d.clear()
            }
            Column::Bool(v, d) => {
                v.clear();
                d.clear()
            }
        }
    }
}

/// The Parquet schema: every column optional; times are plain INT64 milliseconds.
fn parquet_schema(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .iter()
        .map(|(name, kind)| match kind {
            ColumnType::Int => format!("OPTIONAL INT64 {name};"),
            ColumnType::Float => format!("OPTIONAL DOUBLE {name};"),
            ColumnType::Text => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
            ColumnType::Bool => format!("OPTIONAL BOOLEAN {name};"),
        })
        .collect();
    format!("message swarmscan {{ {} }}", fields.join(" "))
}

fn write_parquet(
    store: &Store,
    table: ExportTable,
    schema: &Schema,
    sink: Box<dyn Write + Send>,
    bar: &indicatif::ProgressBar,
) -> Result<u64, ParquetFailure> {
    use parquet::data_type::{BoolType, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let message = parquet::schema::parser::parse_message_type(&parquet_schema(schema))
        .map_err(ParquetFailure::Parquet)?;
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_created_by(format!("swarmscan {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(sink, Arc::new(message), Arc::new(props))
        .map_err(ParquetFailure::Parquet)?;
    let mut columns: Vec<Column> = schema.iter().map(|(_, k)| Column::new(*k)).collect();
    let mut buffered = 0usize;
    let mut rows = 0u64;
    let mut failed: Option<parquet::errors::ParquetError> = None;

    fn flush<W: Write + Send>(
        writer: &mut SerializedFileWriter<W>,
        columns: &mut [Column],
    ) -> Result<(), parquet::errors::ParquetError> {
        let mut group = writer.next_row_group()?;
        for column in columns.iter_mut() {
            let Some(mut out) = group.next_column()? else {
                break;
            };
            match column {
                Column::Int(v, d) => {
                    out.typed::<Int64Type>().write_batch(v, Some(d), None)?;
                }
                Column::Float(v, d) => {
                    out.typed::<DoubleType>().write_batch(v, Some(d), None)?;
                }
                Column::Text(v, d) => {
                    out.typed::<ByteArrayType>().write_batch(v, Some(d), None)?;
                }
                Column::Bool(v, d) => {
                    out.typed::<BoolType>().write_batch(v, Some(d), None)?;
                }
            }
            out.close()?;
            column.clear();
        }
        group.close()?;
        Ok(())
    }

    store
        .for_each_export_row(table, |row| {
            for (column, value) in columns.iter_mut().zip(row) {
                column.push(value);
            }
            buffered += 1;
            rows += 1;
            if buffered == ROW_GROUP {
                if let Err(e) = flush(&mut writer, &mut columns) {
                    failed = Some(e);
                    return false;
                }
                buffered = 0;
                bar.set_position(rows);
            }
            true
        })
        .map_err(ParquetFailure::Store)?;
    if let Some(e) = failed {
        return Err(ParquetFailure::Parquet(e));
    }
    if buffered > 0 || rows == 0 {
        flush(&mut writer, &mut columns).map_err(ParquetFailure::Parquet)?;
    }
    let mut sink = writer.into_inner().map_err(ParquetFailure::Parquet)?;
    sink.flush().map_err(|e| {
        ParquetFailure::Parquet(parquet::errors::ParquetError::External(Box::new(e)))
    })?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_quoting() {
        let row = [
            Value::Int(3),
            Value::Null,
            Value::Text("a,b".into()),
            Value::Text("say \"hi\"".into()),
            Value::Float(0.5),
        ];
        assert_eq!(csv_line(&row), "3,,\"a,b\",\"say \"\"hi\"\"\",0.5");
    }

    #[test]
    fn json_lines_keep_schema_order_and_types() {
        let schema: Schema = vec![
            ("z".into(), ColumnType::Int),
            ("a".into(), ColumnType::Bool),
            ("m".into(), ColumnType::Float),
            ("t".into(), ColumnType::Text),
        ];
        let row = [
            Value::Int(7),
            Value::Int(1),
            Value::Float(f64::NAN),
            Value::Text("x\"y".into()),
        ];
        assert_eq!(
            json_line(&schema, &row),
            r#"{"z":7,"a":true,"m":null,"t":"x\"y"}"#
        );
    }
}
