//! The verification ledger: one JSON object per line, one line per round.
//!
//! Appends write a whole line in one `write` on a file opened for appending (and
//! start it on a fresh line if a crash left the last one unfinished), then sync.
//! Readers tolerate corrupt lines: each is reported by its number and, for the
//! streak, ends it (what that round was cannot be known).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One line of the ledger.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A round.
    Round {
        /// 1-based line number.
        line: usize,
        /// The source hash the round ran on.
        source_hash: String,
        /// Whether every check held.
        clean: bool,
        /// When it ran (RFC 3339), if recorded.
        time: Option<String>,
    },
    /// A line that is not a round.
    Corrupt {
        /// 1-based line number.
        line: usize,
        /// Why it was rejected.
        reason: String,
    },
}

/// Reads every non-blank line of the ledger (a missing file is an empty ledger).
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the ledger {}", path.display()))
        }
    };
    Ok(parse(&raw))
}

/// Parses ledger bytes.
pub fn parse(raw: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(parse_line(line_no, line));
    }
    out
}

fn parse_line(line: usize, bytes: &[u8]) -> Entry {
    let corrupt = |reason: String| Entry::Corrupt { line, reason };
    let v: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return corrupt(format!("not JSON ({e})")),
    };
    let Some(source_hash) = v.get("source_hash").and_then(|h| h.as_str()) else {
        return corrupt("no string field `source_hash`".into());
    };
    let Some(clean) = v.get("clean").and_then(serde_json::Value::as_bool) else {
        return corrupt("no boolean field `clean`".into());
    };
    let time = v.get("time").and_then(|t| t.as_str()).map(str::to_string);
    Entry::Round {
        line,
        source_hash: source_hash.to_string(),
        clean,
        time,
    }
}

/// Consecutive clean rounds of one source hash, most recent first.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Streak {
    /// The hash asked about.
    pub source_hash: String,
    /// Consecutive clean rounds of that hash at the end of the ledger.
    pub count: usize,
    /// Time of the most recent round of the streak.
    pub last: Option<String>,
    /// What ended the streak (`None`: the start of the ledger).
    pub ended_by: Option<String>,
    /// Rounds in the ledger.
    pub rounds: usize,
    /// Line numbers of corrupt lines.
    pub corrupt_lines: Vec<usize>,
}

/// Counts, from the last line back, the clean rounds of `hash`; a round of another
/// hash, an unclean round or a corrupt line ends the streak.
pub fn streak(entries: &[Entry], hash: &str) -> Streak {
    let mut s = Streak {
        source_hash: hash.to_string(),
        count: 0,
        last: None,
        ended_by: None,
        rounds: entries
            .iter()
            .filter(|e| matches!(e, Entry::Round { .. }))
            .count(),
        corrupt_lines: entries
            .iter()
            .filter_map(|e| match e {
                Entry::Corrupt { line, .. } => Some(*line),
                Entry::Round { .. } => None,
            })
            .collect(),
    };
    for e in entries.iter().rev() {
        match e {
            Entry::Corrupt { line, reason } => {
                s.ended_by = Some(format!("corrupt line {line} ({reason})"));
                break;
            }
            Entry::Round {
                line, source_hash, ..
            } if source_hash != hash => {
                s.ended_by = Some(format!(
                    "line {line}: a round of another source hash ({})",
                    short(source_hash)
                ));
                break;
            }
            Entry::Round {
                line, clean: false, ..
            } => {
                s.ended_by = Some(format!("line {line}: an unclean round"));
                break;
            }
            Entry::Round { time, .. } => {
                s.count += 1;
                if s.last.is_none() {
                    s.last = time.clone();
                }
            }
        }
    }
    s
}

/// The first 12 hex digits of a hash.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Appends `record` as one line.
pub fn append(path: &Path, record: &serde_json::Value) -> Result<()> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("cannot open the ledger {} for appending", path.display()))?;
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            // A torn last line stays on its own (and is reported as corrupt).
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line)
        .with_context(|| format!("cannot append to the ledger {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("cannot sync the ledger {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(hash: &str, clean: bool) -> String {
        serde_json::json!({"source_hash": hash, "clean": clean, "time": "t"}).to_string()
    }

    #[test]
    fn the_streak_counts_clean_rounds_of_the_hash_from_the_end() {
        let text = [round("a", true), round("b", true), round("b", true)].join("\n");
        let s = streak(&parse(text.as_bytes()), "b");
        assert_eq!(s.count, 2);
        assert!(s
            .ended_by
            .unwrap()
            .contains("line 1: a round of another source hash"));
        assert_eq!(streak(&parse(text.as_bytes()), "a").count, 0);
    }

    #[test]
    fn a_new_hash_resets_the_streak() {
        let text = [round("a", true), round("a", true), round("c", true)].join("\n");
        assert_eq!(streak(&parse(text.as_bytes()), "a").count, 0);
        assert_eq!(streak(&parse(text.as_bytes()), "c").count, 1);
    }

    #[test]
    fn an_unclean_round_ends_the_streak() {
        let text = [round("a", true), round("a", false), round("a", true)].join("\n");
        let s = streak(&parse(text.as_bytes()), "a");
        assert_eq!(s.count, 1);
        assert_eq!(s.ended_by.as_deref(), Some("line 2: an unclean round"));
    }

    #[test]
    fn corrupt_lines_are_reported_by_number_and_end_the_streak() {
        let text = format!(
            "{}\n{{\"source_hash\": \"a\", \"cle\n{}\n\n{}\n",
            round("a", true),
            round("a", true),
            round("a", true)
        );
        let entries = parse(text.as_bytes());
        let s = streak(&entries, "a");
        assert_eq!(s.count, 2);
        assert_eq!(s.corrupt_lines, vec![2]);
        assert!(s.ended_by.unwrap().starts_with("corrupt line 2"));
        assert_eq!(s.rounds, 3);
    }

    #[test]
    fn appends_are_whole_lines_even_after_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        append(
            &path,
            &serde_json::json!({"source_hash": "a", "clean": true}),
        )
        .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"source_hash\": \"a\", \"cl").unwrap();
        drop(f);
        append(
            &path,
            &serde_json::json!({"source_hash": "a", "clean": true}),
        )
        .unwrap();
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(matches!(entries[1], Entry::Corrupt { line: 2, .. }));
        assert!(matches!(
            entries[2],
            Entry::Round {
                line: 3,
                clean: true,
                ..
            }
        ));
        assert_eq!(streak(&entries, "a").count, 1);
        assert!(read(&dir.path().join("missing")).unwrap().is_empty());
    }
}
