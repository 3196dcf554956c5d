//! Multi-row INSERT statements, chunked under both backends' bind-parameter limits.

use sqlx::{AssertSqlSafe, Executor};

use super::{Conn, StoreError};

/// One bound value.
#[derive(Debug, Clone)]
pub enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Float(f64),
    OptFloat(Option<f64>),
}

/// Inserts `rows` into `table` with `conflict` appended (e.g. `ON CONFLICT (k) DO NOTHING`).
/// Each row must have `columns.len()` values.
pub async fn insert_rows(
    conn: &mut Conn,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
    conflict: &str,
) -> Result<u64, StoreError> {
    const MAX_PARAMS: usize = 30_000;
    let per_chunk = (MAX_PARAMS / columns.len().max(1)).clamp(1, 50);
    // SQLite gets anonymous `?` placeholders: for a numbered one, sqlx asks SQLite for each
    // parameter's name, a linear search, which made binding a statement quadratic in its
    // parameters (~13% of a simulation's time went there). PostgreSQL needs `$n`.
    let anonymous = conn.backend_name() == "SQLite";
    let mut affected = 0;
    for chunk in rows.chunks(per_chunk) {
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut n = 0;
        for (i, row) in chunk.iter().enumerate() {
            if row.len() != columns.len() {
                return Err(StoreError::Corrupt(format!(
                    "row for {table} has {} values, expected {}",
                    row.len(),
                    columns.len()
                )));
            }
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for j in 0..row.len() {
                if j > 0 {
                    sql.push(',');
                }
                n += 1;
                if anonymous {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${n}"));
                }
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(conflict);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            for p in row {
                query = match p {
                    Param::Text(s) => query.bind(s.clone()),
                    Param::OptText(s) => query.bind(s.clone()),
                    Param::Int(i) => query.bind(*i),
                    Param::Float(f) => query.bind(*f),
                    Param::OptFloat(f) => query.bind(*f),
                };
            }
        }
        affected += conn.execute(query).await?.rows_affected();
    }
    Ok(affected)
}
