//! The durable event queue (S5).
//!
//! One file per event in `<data>/queue/`, named `<created ms>-<id>.evt` so a directory listing
//! is the queue order. An event is on disk (fsynced, renamed into place) before `push`
//! returns, and is deleted only after the server acknowledged its id, which it does only after
//! committing it. The server de-duplicates by id, so resending after a crash is harmless:
//! nothing is lost and nothing counted twice.

use std::path::{Path, PathBuf};

use outpost_proto::pb::v1::Event;
use prost::Message;

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue holds its maximum.
    #[error(
        "event queue is full ({0} events); the agent will accept more once the server has acknowledged some"
    )]
    Full(usize),
    /// Disk failure.
    #[error("event queue i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The queue directory.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
    max: usize,
}

impl Queue {
    /// Opens (creating) the queue in a data directory.
    pub fn open(data: &Path, max: usize) -> std::io::Result<Queue> {
        let dir = data.join("queue");
        std::fs::create_dir_all(&dir)?;
        Ok(Queue { dir, max })
    }

    fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "evt"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.files().map(|f| f.len()).unwrap_or(0)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an event durably. Returns its id.
    pub fn push(&self, kind: &str, payload: &[u8], now_ms: i64) -> Result<String, QueueError> {
        let n = self.len();
        if n >= self.max {
            return Err(QueueError::Full(n));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.write(id, kind, payload, now_ms)
    }

    /// Queues an event under an id the caller derived (a task result: the same for every
    /// attempt at reporting one run, D5). An event with that id already waiting is kept as it
    /// is; one already acknowledged is sent again and ignored by the server (it de-duplicates
    /// by id), so a result is never counted twice.
    pub fn push_with_id(
        &self,
        id: &str,
        kind: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(), QueueError> {
        let suffix = format!("-{id}.evt");
        let waiting = self.files()?.iter().any(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        });
        if waiting {
            return Ok(());
        }
        let n = self.len();
        if n >= self.max {
            return Err(QueueError::Full(n));
        }
        self.write(id.to_owned(), kind, payload, now_ms).map(|_| ())
    }

    fn write(
        &self,
        id: String,
        kind: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<String, QueueError> {
        let ev = Event {
            id: id.clone(),
            kind: kind.to_owned(),
            payload: payload.to_vec(),
            created_at_ms: now_ms,
        };
        let path = self.dir.join(format!("{now_ms:013}-{id}.evt"));
        outpost_net::fsutil::write_atomic(&path, &ev.encode_to_vec(), false)?;
        Ok(id)
    }

    /// The oldest events, at most `max` of them and at most `max_bytes` encoded.
    pub fn peek(&self, max: usize, max_bytes: usize) -> std::io::Result<Vec<Event>> {
        let mut out = vec![];
        let mut bytes = 0;
        for f in self.files()?.into_iter().take(max) {
            let Ok(data) = std::fs::read(&f) else {
                continue;
            };
            match Event::decode(data.as_slice()) {
                Ok(e) => {
                    bytes += data.len() + 16;
                    if bytes > max_bytes && !out.is_empty() {
                        break;
                    }
                    out.push(e);
                }
                Err(err) => {
                    // A file we did not write whole cannot exist (atomic rename); anything
                    // else in the directory is set aside, not sent.
                    tracing::warn!(file = %f.display(), error = %err, "unreadable event file set aside");
                    let _ = std::fs::rename(&f, f.with_extension("bad"));
                }
            }
        }
        Ok(out)
    }

    /// Deletes acknowledged events.
    pub fn ack(&self, ids: &[String]) -> std::io::Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for f in self.files()? {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // `<created ms>-<id>.evt`: the id is everything after the first dash.
            let id = name
                .trim_end_matches(".evt")
                .split_once('-')
                .map_or("", |(_, id)| id);
            if ids.iter().any(|a| a == id) {
                std::fs::remove_file(&f)?;
                n += 1;
            }
        }
        outpost_net::fsutil::sync_dir(&self.dir)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_queue_survives_reopen_and_deletes_only_acked() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 10).unwrap();
        let a = q.push("k", b"one", 1).unwrap();
        let b = q.push("k", b"two", 2).unwrap();
        let q2 = Queue::open(dir.path(), 10).unwrap();
        let got = q2.peek(10, 1 << 20).unwrap();
        assert_eq!(
            got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            vec![a.clone(), b.clone()]
        );
        q2.ack(&[a]).unwrap();
        // A derived id is queued once however often it is pushed; ack() finds it by id.
        q2.push_with_id("task-t1-0", "task-result", b"r", 3)
            .unwrap();
        q2.push_with_id("task-t1-0", "task-result", b"r2", 4)
            .unwrap();
        assert_eq!(q2.len(), 2);
        q2.ack(&["task-t1-0".into()]).unwrap();
        assert_eq!(q2.len(), 1);
        assert_eq!(q2.peek(10, 1 << 20).unwrap()[0].id, b);
        let small = Queue::open(dir.path(), 1).unwrap();
        assert!(matches!(small.push("k", b"x", 3), Err(QueueError::Full(1))));
    }
}
