//! The offline runner behind `feedback fold`: the same fold as the processor, over JSONL files of
//! `{"topic", "payload"}` records (the shape `kcat -J` prints), writing the storage documents,
//! the alerts and the refused records.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::alert::Alert;
use crate::codec::{decode, AvroSchemas};
use crate::config::TopicNames;
use crate::event::{Event, RejectKind, Rejection};
use crate::fold::{Engine, FoldConfig};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot open input {path}: {source}")]
    OpenInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read input {path}: {source}")]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stopped by [`FoldJob::stop`] (SIGTERM or Ctrl-C) before the end.
    #[error("{0}")]
    Interrupted(String),
}

/// What `feedback fold` was asked to do.
#[derive(Debug, Clone)]
pub struct FoldJob {
    pub inputs: Vec<PathBuf>,
    pub storage_dir: PathBuf,
    pub alerts_out: Option<PathBuf>,
    pub dlq_out: Option<PathBuf>,
    pub topics: TopicNames,
    pub config: FoldConfig,
    pub progress: bool,
    /// Set (by a signal) to stop: before the next chunk of records, or the next slice of
    /// documents, with [`OfflineError::Interrupted`] and no temporary file left behind.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What it did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FoldSummary {
    pub records: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub rejected_by_kind: BTreeMap<String, u64>,
    pub tenants: u64,
    pub alerts: u64,
    pub alerts_by_type: BTreeMap<String, u64>,
    #[serde(skip)]
    pub elapsed: Duration,
}

impl std::fmt::Display for FoldSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        };
        writeln!(
            f,
            "records   {} read, {} accepted, {} rejected ({:.1}s, {:.0} records/s)",
            self.records, self.accepted, self.rejected, secs, rate
        )?;
        for (kind, n) in &self.rejected_by_kind {
            writeln!(f, "          {n} {kind}")?;
        }
        writeln!(f, "tenants   {}", self.tenants)?;
        write!(f, "alerts    {}", self.alerts)?;
        for (kind, n) in &self.alerts_by_type {
            write!(f, "\n          {n} {kind}")?;
        }
        Ok(())
    }
}

/// One input line as `kcat -J` prints it; fields other than these are ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    partition: Option<i64>,
    offset: Option<i64>,
}

/// A refused record as written to `--dlq-out`: the DLQ headers of SPEC 3 and the original payload.
#[derive(Serialize)]
struct DlqRecord<'a> {
    #[serde(rename = "error.kind")]
    kind: RejectKind,
    #[serde(rename = "error.message")]
    message: &'a str,
    #[serde(rename = "source.topic")]
    topic: Option<&'a str>,
    #[serde(rename = "source.partition")]
    partition: Option<i64>,
    #[serde(rename = "source.offset")]
    offset: Option<i64>,
    #[serde(rename = "source.file")]
    file: &'a Path,
    #[serde(rename = "source.line")]
    line: u64,
    payload: &'a str,
}

struct Outputs {
    alerts: Option<(PathBuf, BufWriter<File>)>,
    dlq: Option<(PathBuf, BufWriter<File>)>,
}

fn create(path: &Option<PathBuf>) -> Result<Option<(PathBuf, BufWriter<File>)>, OfflineError> {
    let Some(path) = path else { return Ok(None) };
    let err = |source| OfflineError::WriteOutput {
        path: path.clone(),
        source,
    };
    // Like --storage-dir, a directory named for an output is created.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = File::create(path).map_err(err)?;
    Ok(Some((
        path.clone(),
        BufWriter::with_capacity(1 << 16, file),
    )))
}

fn write_line<T: Serialize>(
    out: &mut Option<(PathBuf, BufWriter<File>)>,
    value: &T,
) -> Result<(), OfflineError> {
    let Some((path, w)) = out else { return Ok(()) };
    let err = |source| OfflineError::WriteOutput {
        path: path.clone(),
        source,
    };
    serde_json::to_writer(&mut *w, value).map_err(|e| err(e.into()))?;
    w.write_all(b"\n").map_err(err)
}

/// Runs the fold over the input files, in the order given, and writes every output.
pub fn fold_files(job: &FoldJob) -> Result<FoldSummary, OfflineError> {
    let started = Instant::now();
    // Open everything first: a missing input fails before any output is touched.
    let mut readers = Vec::new();
    let mut total_bytes = 0;
    for path in &job.inputs {
        let file = File::open(path).map_err(|source| OfflineError::OpenInput {
            path: path.clone(),
            source,
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            let source = std::io::Error::other("it is a directory");
            return Err(OfflineError::OpenInput {
                path: path.clone(),
                source,
            });
        }
        total_bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
        readers.push((path.clone(), file));
    }
    let mut outputs = Outputs {
        alerts: create(&job.alerts_out)?,
        dlq: create(&job.dlq_out)?,
    };
    let progress = if job.progress {
        progress_bar(total_bytes)
    } else {
        indicatif::ProgressBar::hidden()
    };

    let stopped = || job.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    let mut engine = Engine::new(job.config.clone());
    let mut summary = FoldSummary::default();
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let paths: Vec<PathBuf> = readers.iter().map(|(p, _)| p.clone()).collect();
    // Reading and decoding run on their own threads, a chunk of lines ahead of the fold: the
    // fold sees the records in file order, and the DLQ and alerts come out as they would with
    // no pipeline at all. The reader owns what it uses and is not waited for when the fold is
    // stopped: it may be blocked reading a pipe that nothing writes to.
    let (chunks, received) = std::sync::mpsc::sync_channel::<Result<Chunk, OfflineError>>(4);
    let topics = job.topics.clone();
    let reader = std::thread::Builder::new()
        .name("fold-reader".into())
        .spawn(move || read_chunks(readers, &topics, &AvroSchemas::builtin(), &chunks))
        .map_err(|source| OfflineError::ReadInput {
            path: paths.first().cloned().unwrap_or_default(),
            source,
        })?;
    loop {
        let next = match received.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => Some(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if stopped() {
            // The records read so far are folded, so the alerts written are all they caused.
            fold_batch(&mut engine, &mut batch, &mut summary, &mut outputs)?;
            progress.finish_and_clear();
            flush(&mut outputs)?;
            return Err(OfflineError::Interrupted(format!(
                "interrupted after {} records: the storage documents were not written; \
                 --alerts-out and --dlq-out hold what those records caused",
                summary.records
            )));
        }
        let Some(chunk) = next else { continue };
        let chunk = chunk?;
        for (line_no, decoded) in chunk.records {
            summary.records += 1;
            match decoded {
                Ok(event) => {
                    summary.accepted += 1;
                    batch.push(event);
                }
                Err(refused) => {
                    summary.rejected += 1;
                    *summary
                        .rejected_by_kind
                        .entry(refused.rejection.kind.to_string())
                        .or_default() += 1;
                    engine.record_rejection(&refused.rejection);
                    write_line(
                        &mut outputs.dlq,
                        &DlqRecord {
                            kind: refused.rejection.kind,
                            message: &refused.rejection.message,
                            topic: refused.topic.as_deref(),
                            partition: refused.partition,
                            offset: refused.offset,
                            file: &paths[chunk.file],
                            line: line_no,
                            payload: &refused.payload,
                        },
                    )?;
                }
            }
            if batch.len() >= BATCH {
                fold_batch(&mut engine, &mut batch, &mut summary, &mut outputs)?;
            }
        }
        progress.inc(chunk.bytes);
    }
    // The reader ended (it sends nothing more once the input ended or could not be read).
    if let Err(panic) = reader.join() {
        std::panic::resume_unwind(panic);
    }
    fold_batch(&mut engine, &mut batch, &mut summary, &mut outputs)?;
    progress.finish_and_clear();

    let storage = Storage::new(&job.storage_dir);
    let names = engine.tenants();
    let written = storage.write_all_tenants(&names, |name| engine.documents(name), stopped);
    if let Err(StorageError::Interrupted { written }) = written {
        flush(&mut outputs)?;
        return Err(OfflineError::Interrupted(format!(
            "interrupted while writing the storage documents: those of {written} of {} tenants \
             were written, the others are as they were (--alerts-out and --dlq-out are complete)",
            names.len()
        )));
    }
    written?;
    flush(&mut outputs)?;
    summary.tenants = names.len() as u64;
    summary.elapsed = started.elapsed();
    // Freeing every tenant's state takes one core about a second for 1,000 tenants of 550
    // days, the last 7% of the run: nothing waits for it (the binary exits, and the system
    // takes the memory back at once).
    std::thread::spawn(move || drop(engine));
    Ok(summary)
}

/// Flushes the alerts and refused records written so far to their files.
fn flush(outputs: &mut Outputs) -> Result<(), OfflineError> {
    for (path, w) in [&mut outputs.alerts, &mut outputs.dlq]
        .into_iter()
        .flatten()
    {
        w.flush().map_err(|source| OfflineError::WriteOutput {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} folding [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    );
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The start and end of `line` without its surrounding whitespace (and line break).
fn trimmed(line: &[u8]) -> (usize, usize) {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = line[..end]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    (start, end)
}

/// Lines read and decoded ahead of the fold, from one input file.
struct Chunk {
    /// Index of the file in the job's inputs.
    file: usize,
    /// Bytes read, blank lines included, for the progress bar.
    bytes: u64,
    /// (line number, what the line decoded to), blank lines left out.
    records: Vec<(u64, Result<Event, Box<Rejected>>)>,
}

/// A refused line, owning what the DLQ record needs.
struct Rejected {
    rejection: Rejection,
    topic: Option<String>,
    partition: Option<i64>,
    offset: Option<i64>,
    payload: String,
}

/// Lines per chunk: enough to keep both cores busy decoding one chunk, few enough that the
/// queue of chunks waiting for the fold stays small (about 5 MB each).
const CHUNK_LINES: usize = 8_192;

/// Bytes read from an input file at a time.
const READ_BLOCK: u64 = 1 << 20;

/// Reads the inputs in order, decodes each chunk of lines in parallel (rayon) and sends the
/// chunks on in order; stops when the fold hangs up or after the first read error, which it sends.
fn read_chunks(
    readers: Vec<(PathBuf, File)>,
    topics: &TopicNames,
    schemas: &AvroSchemas,
    out: &std::sync::mpsc::SyncSender<Result<Chunk, OfflineError>>,
) {
    // One buffer for every chunk, the file read into it in blocks: a fresh one grew by copying
    // to the chunk's size (megabytes) and had the kernel zero new pages for it each time, and
    // reading line by line copied every line out of the reader's buffer.
    let mut text: Vec<u8> = Vec::with_capacity(2 * READ_BLOCK as usize);
    for (file, (path, mut reader)) in readers.into_iter().enumerate() {
        let mut line_no = 0u64;
        let mut eof = false;
        text.clear();
        // Bytes of `text` already looked through for the end of the unfinished line.
        let mut scanned = 0;
        while !(eof && text.is_empty()) {
            let mut lines: Vec<(u64, std::ops::Range<usize>)> = Vec::with_capacity(CHUNK_LINES);
            // Where the unfinished line starts: everything before it is in the chunk.
            let mut start = 0;
            while lines.len() < CHUNK_LINES {
                let end = match memchr::memchr(b'\n', &text[scanned..]) {
                    Some(i) => scanned + i,
                    None if eof => match start < text.len() {
                        // The last line, without a newline.
                        true => text.len(),
                        false => break,
                    },
                    None => {
                        scanned = text.len();
                        match (&mut reader).take(READ_BLOCK).read_to_end(&mut text) {
                            Ok(0) => eof = true,
                            Ok(_) => {}
                            Err(source) => {
                                let _ = out.send(Err(OfflineError::ReadInput { path, source }));
                                return;
                            }
                        }
                        continue;
                    }
                };
                line_no += 1;
                let (from, to) = trimmed(&text[start..end]);
                if from < to {
                    lines.push((line_no, start + from..start + to));
                }
                start = (end + 1).min(text.len());
                scanned = start;
            }
            let records = lines
                .into_par_iter()
                .map(|(n, range)| {
                    let line = &text[range];
                    let decoded = decode_line(line, topics, schemas).map_err(|r| {
                        Box::new(Rejected {
                            payload: String::from_utf8_lossy(r.payload.as_deref().unwrap_or(line))
                                .into_owned(),
                            rejection: r.rejection,
                            topic: r.topic,
                            partition: r.partition,
                            offset: r.offset,
                        })
                    });
                    (n, decoded)
                })
                .collect();
            let chunk = Chunk {
                file,
                bytes: start as u64,
                records,
            };
            if out.send(Ok(chunk)).is_err() {
                return;
            }
            // The unfinished line moves to the front for the next chunk.
            text.drain(..start);
            scanned -= start;
        }
    }
}

struct Refused<'a> {
    rejection: Rejection,
    topic: Option<String>,
    partition: Option<i64>,
    offset: Option<i64>,
    /// The record's bytes: the payload object's text, or what a payload string holds.
    payload: Option<Cow<'a, [u8]>>,
}

/// Records decoded before they are folded together: the fold takes each tenant's records of a
/// batch in one go, the tenants on every core ([`Engine::apply_batch_parallel`]), so alerts of
/// different tenants interleave by batch.
const BATCH: usize = 65_536;

/// Folds the decoded batch and writes the alerts it caused.
fn fold_batch(
    engine: &mut Engine,
    batch: &mut Vec<Event>,
    summary: &mut FoldSummary,
    outputs: &mut Outputs,
) -> Result<(), OfflineError> {
    let mut alerts: Vec<Alert> = Vec::new();
    engine.apply_batch_parallel(batch, &mut alerts);
    // The batch's events dropped, and its alerts' JSON lines written, on every core: on this
    // thread alone they kept one core idle between batches (5% of the run's samples).
    batch.par_drain(..).for_each(drop);
    for alert in &alerts {
        summary.alerts += 1;
        *summary
            .alerts_by_type
            .entry(alert.kind.to_string())
            .or_default() += 1;
    }
    let Some((path, w)) = &mut outputs.alerts else {
        return Ok(());
    };
    let err = |source| OfflineError::WriteOutput {
        path: path.clone(),
        source,
    };
    let lines: Vec<Vec<u8>> = alerts
        .par_chunks(ALERTS_PER_JOB)
        .map(|alerts| {
            let mut lines = Vec::new();
            for alert in alerts {
                alert.write_json(&mut lines);
                lines.push(b'\n');
            }
            lines
        })
        .collect();
    for lines in &lines {
        w.write_all(lines).map_err(err)?;
    }
    Ok(())
}

/// Alerts written to JSON lines by one job of the pool.
const ALERTS_PER_JOB: usize = 256;

/// The fast path for the plainest line, `{"topic":"NAME","payload":{...}}` with nothing else
/// (what `feedback simulate` writes): the payload is decoded where it lies, without first
/// scanning it as a raw JSON value, which cost a third of decoding. Only a payload that decodes
/// and passes validation is taken; anything else, a trailing field included (the slice then is
/// no single JSON object), goes the general way, which finds the same event or says why not.
fn decode_plain_line(line: &[u8], topics: &TopicNames, schemas: &AvroSchemas) -> Option<Event> {
    let rest = line.strip_prefix(br#"{"topic":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    let (name, rest) = rest.split_at(end);
    let payload = rest.strip_prefix(br#"","payload":"#)?.strip_suffix(b"}")?;
    if payload.first() != Some(&b'{') {
        return None;
    }
    let topic = topics.input(std::str::from_utf8(name).ok()?)?;
    decode(topic, payload, schemas).ok()
}

fn decode_line<'a>(
    line: &'a [u8],
    topics: &TopicNames,
    schemas: &AvroSchemas,
) -> Result<Event, Box<Refused<'a>>> {
    let refuse = |kind, message: String| {
        Box::new(Refused {
            rejection: Rejection::new(kind, message),
            topic: None,
            partition: None,
            offset: None,
            payload: None,
        })
    };
    if let Some(event) = decode_plain_line(line, topics, schemas) {
        return Ok(event);
    }
    let envelope: Envelope = serde_json::from_slice(line).map_err(|e| {
        refuse(
            RejectKind::Malformed,
            format!("line is not a JSON object with topic and payload: {e}"),
        )
    })?;
    let topic_name = envelope.topic.as_deref().unwrap_or_default();
    let with_source = |mut r: Box<Refused<'a>>, payload: Option<&'a [u8]>| {
        r.topic = envelope.topic.as_deref().map(str::to_owned);
        r.partition = envelope.partition;
        r.offset = envelope.offset;
        r.payload = payload.map(Cow::Borrowed);
        r
    };
    let Some(raw) = envelope.payload else {
        return Err(with_source(
            refuse(RejectKind::Malformed, "record has no payload".into()),
            None,
        ));
    };
    let raw_bytes = raw.get().as_bytes();
    let Some(topic) = topics.input(topic_name) else {
        let message = format!("topic {topic_name:?} is not one of the input topics");
        let mut r = with_source(refuse(RejectKind::UnknownTopic, message), Some(raw_bytes));
        // A payload string's bytes, as below, when it reads as one.
        if raw_bytes.first() == Some(&b'"') {
            if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
                r.payload = Some(Cow::Owned(text.into_bytes()));
            }
        }
        return Err(r);
    };
    // A payload given as a string (as kcat -J prints it) is the record's bytes; an object is the record.
    let mut unescaped: Option<String> = None;
    let bytes = if raw_bytes.first() == Some(&b'"') {
        let text: String = serde_json::from_str(raw.get()).map_err(|e| {
            with_source(
                refuse(RejectKind::Malformed, format!("payload string: {e}")),
                Some(raw_bytes),
            )
        })?;
        unescaped.insert(text).as_bytes()
    } else if raw_bytes == b"null" {
        return Err(with_source(
            refuse(RejectKind::Malformed, "payload is null".into()),
            None,
        ));
    } else {
        raw_bytes
    };
    match decode(topic, bytes, schemas) {
        Ok(event) => Ok(event),
        Err(rejection) => {
            let mut r = with_source(refuse(rejection.kind, String::new()), Some(raw_bytes));
            r.rejection = rejection;
            // The DLQ keeps the record's bytes, not the JSON string that carried them.
            if let Some(text) = unescaped {
                r.payload = Some(Cow::Owned(text.into_bytes()));
            }
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTCOME: &str = r#"{"tenant":"acme","date":"2026-11-30","channel":"meta","campaign_id":"c1","spend":10.5,"revenue":42.0,"source":"shopify"}"#;

    fn general(line: &str) -> Result<Event, String> {
        let topics = TopicNames::default();
        let schemas = AvroSchemas::builtin();
        // The general path alone: what every line got before the fast path existed.
        let envelope: Envelope = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let topic = topics
            .input(envelope.topic.as_deref().unwrap_or_default())
            .ok_or("topic")?;
        decode(
            topic,
            envelope.payload.ok_or("payload")?.get().as_bytes(),
            &schemas,
        )
        .map_err(|r| r.message)
    }

    /// The fast path takes only what the general path would read the same way: every variant of
    /// a line decodes to the same event, or is refused, whichever path it takes.
    #[test]
    fn plain_lines_decode_as_the_general_path_decodes_them() {
        let topics = TopicNames::default();
        let schemas = AvroSchemas::builtin();
        let lines = [
            format!(r#"{{"topic":"outcomes","payload":{OUTCOME}}}"#),
            format!(r#"{{"topic":"outcomes","payload":{OUTCOME},"partition":3}}"#),
            format!(r#"{{"topic":"outcomes","payload":{OUTCOME},"topic":"forecasts"}}"#),
            format!(r#"{{"topic":"forecasts","payload":{OUTCOME}}}"#),
            format!(r#"{{"topic":"outcomes","payload":{OUTCOME} }}"#),
            format!(r#"{{"topic":"out\u0063omes","payload":{OUTCOME}}}"#),
            format!(
                r#"{{"topic":"outcomes","payload":{}}}"#,
                OUTCOME.replace("42.0", "-1")
            ),
            r#"{"topic":"outcomes","payload":{"tenant":"acme"}}"#.to_owned(),
        ];
        for line in &lines {
            let fast = decode_plain_line(line.as_bytes(), &topics, &schemas);
            let full = decode_line(line.as_bytes(), &topics, &schemas).map_err(|r| r.rejection);
            if let Some(event) = &fast {
                assert_eq!(Ok(event), general(line).as_ref(), "{line}");
            }
            assert_eq!(
                full.as_ref().ok(),
                general(line).as_ref().ok(),
                "{line}: {full:?}"
            );
        }
        assert!(decode_plain_line(lines[0].as_bytes(), &topics, &schemas).is_some());
        assert!(decode_plain_line(lines[1].as_bytes(), &topics, &schemas).is_none());
    }

    /// Lines are split where the file has them, whatever the blocks and chunks: across block
    /// and chunk boundaries, blank, ending in CRLF, longer than a block, the last one without
    /// a newline; each once, in order, with its line number.
    #[test]
    fn lines_come_whole_and_numbered_across_blocks_and_chunks() {
        let topics = TopicNames::default();
        let schemas = AvroSchemas::builtin();
        let mut text = String::new();
        // (line number, tenant of the outcome, or the length of a refused line)
        let mut expected: Vec<(u64, Result<String, usize>)> = Vec::new();
        let mut line_no = 0;
        for i in 0..2 * CHUNK_LINES + 700 {
            line_no += 1;
            match i % 97 {
                5 => text.push('\n'),
                6 => text.push_str("  \t \r\n"),
                7 if i < 300 => {
                    // Longer than a read block: refused, its payload (the bytes the string
                    // holds) whole in the DLQ.
                    let bytes = "x".repeat(3 << 20);
                    let long = format!(r#"{{"topic":"outcomes","payload":"{bytes}"}}"#);
                    expected.push((line_no, Err(bytes.len())));
                    text.push_str(&long);
                    text.push('\n');
                }
                _ => {
                    let tenant = format!("t{i}");
                    let line = format!(
                        r#"{{"topic":"outcomes","payload":{}}}"#,
                        OUTCOME.replace("acme", &tenant)
                    );
                    text.push_str(&line);
                    text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
                    expected.push((line_no, Ok(tenant)));
                }
            }
        }
        line_no += 1;
        text.push_str(&format!(r#"{{"topic":"outcomes","payload":{OUTCOME}}}"#));
        expected.push((line_no, Ok("acme".to_owned())));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &text).unwrap();
        let (send, receive) = std::sync::mpsc::sync_channel(64);
        let readers = vec![(path.clone(), File::open(&path).unwrap())];
        std::thread::scope(|scope| {
            scope.spawn(|| read_chunks(readers, &topics, &schemas, &send));
        });
        drop(send);
        let (mut got, mut bytes, mut chunks) = (Vec::new(), 0, 0);
        for chunk in receive {
            let chunk = chunk.unwrap();
            chunks += 1;
            bytes += chunk.bytes;
            got.extend(chunk.records.into_iter().map(|(n, r)| {
                (
                    n,
                    r.map(|e| e.tenant().to_owned())
                        .map_err(|r| r.payload.len()),
                )
            }));
        }
        assert!(chunks >= 3, "{chunks} chunks");
        assert_eq!(bytes, text.len() as u64);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e);
        }
    }

    /// Each file's lines are numbered from 1 and carry the file's index: an empty file, one of
    /// exactly a read block ending in a newline, one without a final newline.
    #[test]
    fn several_files_each_numbered_from_one() {
        let topics = TopicNames::default();
        let schemas = AvroSchemas::builtin();
        let line = |tenant: &str| {
            format!(
                r#"{{"topic":"outcomes","payload":{}}}"#,
                OUTCOME.replace("acme", tenant)
            )
        };
        // Lines padded with trailing blanks so that the file is exactly READ_BLOCK bytes.
        let mut block = String::new();
        let mut in_block = 0;
        while block.len() < READ_BLOCK as usize {
            let mut l = line(&format!("b{in_block}"));
            let left = READ_BLOCK as usize - block.len();
            if left < 2 * (l.len() + 1) {
                l.push_str(&" ".repeat(left - l.len() - 1));
            }
            block.push_str(&l);
            block.push('\n');
            in_block += 1;
        }
        assert_eq!(block.len(), READ_BLOCK as usize);
        let last = format!("{}\n\n{}", line("c1"), line("c3"));
        let files = [String::new(), block, last];

        let dir = tempfile::tempdir().unwrap();
        let readers = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.path().join(format!("{i}.jsonl"));
                std::fs::write(&path, text).unwrap();
                let file = File::open(&path).unwrap();
                (path, file)
            })
            .collect();
        let (send, receive) = std::sync::mpsc::sync_channel(64);
        std::thread::scope(|scope| {
            scope.spawn(|| read_chunks(readers, &topics, &schemas, &send));
        });
        drop(send);
        let mut bytes = [0u64; 3];
        let mut got = Vec::new();
        for chunk in receive {
            let chunk = chunk.unwrap();
            bytes[chunk.file] += chunk.bytes;
            for (n, record) in chunk.records {
                let event = record.unwrap_or_else(|r| panic!("line {n}: {}", r.payload));
                got.push((chunk.file, n, event.tenant().to_owned()));
            }
        }
        assert_eq!(bytes, files.map(|f| f.len() as u64));
        let mut expected: Vec<_> = (0..in_block)
            .map(|i| (1, i as u64 + 1, format!("b{i}")))
            .collect();
        expected.push((2, 1, "c1".to_owned()));
        expected.push((2, 3, "c3".to_owned()));
        assert_eq!(got, expected);
    }
}
