//! How berthctl prints: tables, JSON, YAML or a Go template over the
//! protobuf JSON mapping, and the short forms tables use.
use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use crate::cli::{Format, ListFilter};

/// Prints `doc` (a message in the protobuf JSON mapping) as `format` asks;
/// `table` is what a table would print.
pub(crate) fn emit(
    doc: &serde_json::Value,
    format: Format,
    template: Option<&str>,
    table: impl FnOnce() -> Result<()>,
) -> Result<()> {
    match format {
        Format::Table => table(),
        Format::Json => print_json(doc),
        Format::Yaml => {
            print!("{}", serde_norway::to_string(doc)?);
            Ok(())
        }
        Format::GoTemplate => {
            let t = template.context("-o go-template needs --template")?;
            let out = gtmpl::template(t, crate::proto_json::to_template_value(doc))
                .map_err(|e| anyhow::anyhow!("template: {e}"))?;
            print!("{out}");
            Ok(())
        }
    }
}

/// A message in the protobuf JSON mapping, with a verbose status's `info`
/// values parsed (as crictl prints inspect).
pub(crate) fn doc<M: prost::Message>(msg: &M, name: &str) -> Result<serde_json::Value> {
    crate::proto_json::to_json(msg, name).map_err(|e| anyhow::anyhow!("{e}"))
}

impl ListFilter {
    pub(crate) fn name_regex(&self) -> Result<Option<regex::Regex>> {
        self.name.as_deref().map(|n| regex::Regex::new(n).with_context(|| format!("--name {n:?}"))).transpose()
    }

    /// `--label k=v` as a CRI label selector.
    pub(crate) fn selector(&self) -> Result<HashMap<String, String>> {
        self.labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--label {l:?}: give key=value"))
            })
            .collect()
    }

    /// Keeps the newest `--last N` (or one with `--latest`), newest first.
    pub(crate) fn cut<T>(&self, items: &mut Vec<T>, created: impl Fn(&T) -> i64) {
        let n = if self.latest { Some(1) } else { self.last };
        if let Some(n) = n {
            items.sort_by_key(|i| std::cmp::Reverse(created(i)));
            items.truncate(n);
        }
    }
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

pub(crate) fn ago(nanos: i64) -> String {
    let now = protocol::cri_time::now_nanos();
    let s = ((now - nanos) / 1_000_000_000).max(0);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// The one id a prefix matches; with no match the prefix is passed on as
/// given, so the runtime answers NotFound in its own words.
pub(crate) fn unique(prefix: &str, mut ids: Vec<String>, what: &str) -> Result<String> {
    match ids.len() {
        0 => Ok(prefix.to_string()),
        1 => Ok(ids.remove(0)),
        n => bail!("{prefix} matches {n} {what}; give more of the id"),
    }
}

/// A verbose status's `info` map with its JSON values parsed, for printing.
pub(crate) fn info_json(info: &HashMap<String, String>) -> HashMap<String, serde_json::Value> {
    info.iter()
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()))))
        .collect()
}

pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
