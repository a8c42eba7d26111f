//! `[hub] data_dir`: the last values and retained values on disk, so that a
//! restart (or `kill -9`) finds them again, and a QoS 1 envelope is
//! acknowledged to its device only once its topic's value is on disk.
//!
//! The store is one redb file (`polyhub.redb` in `data_dir`): an embedded,
//! ACID, copy-on-write B-tree in pure Rust, with no server to run and a
//! file lock that keeps a second hub off the same directory. Why redb and
//! not fjall or SQLite: the data is a key → value map written in batches
//! and read whole at start, which a B-tree with one writer does with the
//! least machinery; fjall's LSM pays off for write volumes far beyond one
//! value per topic, and SQLite would add a C library and SQL for a map.
//!
//! Writes never happen on the routing path. The last-value store hands each
//! change (a topic's new slot, or its removal) to [`Persist`], which keeps
//! at most one pending change per topic (so pending memory is bounded by
//! `max_topics`); one writer thread takes everything pending, writes it in
//! one transaction and commits it (group commit), then tells the waiting
//! publishers which batch is on disk. `fsync` decides when it commits:
//! `always` as soon as something is pending (each commit's fsync covers
//! whatever arrived during the previous one), `batch` (the default) at
//! most once per `fsync_window_ms`, `never` without an fsync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use polyhub_sdk::{Envelope, MessageId, Origin, QoS, Topic};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The store file in `data_dir`.
pub const FILE_NAME: &str = "polyhub.redb";

/// Topic → its slot (format: [`encode_slot`]).
const LAST_VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("last_values");

/// (durable queue, sequence) → a queued envelope (format: [`encode_queued`]).
const QUEUES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queues");

/// Adapter state key → value (`AdapterContext::state_put`).
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// The first byte of every stored slot; another value is refused.
const FORMAT: u8 = 1;

/// Default of `[hub] fsync_window_ms`.
pub const DEFAULT_FSYNC_WINDOW_MS: u64 = 5;

/// When the writer commits and whether it fsyncs (`[hub] fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Commit (and fsync) as soon as anything is pending.
    Always,
    /// Commit (and fsync) at most once per `fsync_window_ms`.
    #[default]
    Batch,
    /// Commit without fsync: a crash of the machine (not of the hub) can
    /// lose the last commits.
    Never,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the file open.
    #[error("{path} is in use by another polyhub process (one data_dir per hub)")]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// The directory or file cannot be created or read.
    #[error("{path}: {message}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file is not a polyhub store, or is damaged.
    #[error("{path} is not a polyhub store or is damaged: {message}; move it away to start with an empty store")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A topic's slot as the last-value store holds it.
#[derive(Debug, Clone)]
pub struct StoredSlot {
    /// The store's update sequence of the slot (older first at eviction).
    pub seq: u64,
    /// The last value.
    pub last: Arc<Envelope>,
    /// The retained value, if any.
    pub retained: Option<Arc<Envelope>>,
}

/// What a topic's pending change is.
#[derive(Debug, Clone)]
enum Change {
    Put(StoredSlot),
    Delete,
}

#[derive(Debug, Default)]
struct Pending {
    changes: HashMap<Topic, Change>,
    /// Durable-queue entries to write (`Some`) or remove (`None`).
    queued: HashMap<(Arc<str>, u64), Option<Arc<Envelope>>>,
    /// Adapter state to write (`Some`) or remove (`None`).
    state: HashMap<String, Option<Vec<u8>>>,
    /// The batch the pending changes will be committed in.
    epoch: u64,
    shutdown: bool,
}

/// The store's figures, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Commits made.
    pub commits: AtomicU64,
    /// Commits that failed (their changes are retried).
    pub errors: AtomicU64,
    /// Topic changes written.
    pub writes: AtomicU64,
}

/// The handle the last-value store writes its changes to.
#[derive(Debug)]
pub struct Persist {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The last committed batch (and whether every batch up to it is on
    /// disk): QoS 1 publishers wait on it.
    committed: watch::Sender<u64>,
    /// The last batch that failed to commit.
    failed: AtomicU64,
    stats: StoreStats,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.queued.is_empty() && self.state.is_empty()
    }
}

/// What one commit writes.
#[derive(Debug, Default)]
struct Batch {
    changes: HashMap<Topic, Change>,
    queued: HashMap<(Arc<str>, u64), Option<Arc<Envelope>>>,
    state: HashMap<String, Option<Vec<u8>>>,
}

/// A batch a QoS 1 publisher waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The batch holding a change could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the data_dir store could not write the value (see the log)")]
pub struct NotStored;

impl Persist {
    /// Records a topic's new slot; the ticket says which batch holds it.
    pub fn put(&self, topic: &Topic, slot: StoredSlot) -> Ticket {
        self.change(topic, Change::Put(slot))
    }

    /// Records a topic's removal.
    pub fn delete(&self, topic: &Topic) -> Ticket {
        self.change(topic, Change::Delete)
    }

    fn change(&self, topic: &Topic, change: Change) -> Ticket {
        let mut p = self.pending.lock();
        p.changes.insert(topic.clone(), change);
        let ticket = Ticket(p.epoch);
        drop(p);
        self.wake.notify_one();
        ticket
    }

    /// Records an envelope queued for a durable subscriber.
    pub fn queue_put(&self, queue: &Arc<str>, seq: u64, envelope: Arc<Envelope>) -> Ticket {
        let mut p = self.pending.lock();
        p.queued.insert((queue.clone(), seq), Some(envelope));
        let ticket = Ticket(p.epoch);
        drop(p);
        self.wake.notify_one();
        ticket
    }

    /// Removes a queued envelope (delivered, or dropped past the queue's
    /// size). One still waiting to be written is replaced by its removal
    /// rather than taken out of the batch: a publisher may hold a ticket for
    /// that batch, and a batch emptied that way would never be committed, so
    /// the publisher would wait for ever. Deleting a key never written costs
    /// one lookup in the commit.
    pub fn queue_delete(&self, queue: &Arc<str>, seq: u64) {
        let mut p = self.pending.lock();
        p.queued.insert((queue.clone(), seq), None);
        drop(p);
        self.wake.notify_one();
    }

    /// Records (`Some`) or removes (`None`) an adapter's state value.
    pub fn state_put(&self, key: &str, value: Option<Vec<u8>>) {
        self.pending.lock().state.insert(key.to_owned(), value);
        self.wake.notify_one();
    }

    /// Waits until the batch of `ticket` is committed.
    pub async fn stored(&self, ticket: Ticket) -> Result<(), NotStored> {
        let mut rx = self.committed.subscribe();
        if rx.wait_for(|c| *c >= ticket.0).await.is_err() {
            return Err(NotStored);
        }
        if self.failed.load(Ordering::Acquire) >= ticket.0 && ticket.0 > 0 {
            // This batch, or a later one, failed; its changes are retried,
            // but the publisher is not told it is safe.
            return Err(NotStored);
        }
        Ok(())
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }
}

/// Durable queues' entries by queue name, each (sequence, envelope).
pub type Queues = HashMap<String, Vec<(u64, Arc<Envelope>)>>;

/// What the store held when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every topic's slot.
    pub slots: Vec<(Topic, StoredSlot)>,
    /// Every durable queue's envelopes, by queue, in order.
    pub queues: Queues,
    /// Adapter state.
    pub state: HashMap<String, Vec<u8>>,
}

/// The open store: the writer thread and what was read at start.
#[derive(Debug)]
pub struct Store {
    persist: Arc<Persist>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `data_dir/polyhub.redb` and reads every slot.
    pub fn open(
        data_dir: &Path,
        fsync: Fsync,
        window: Duration,
    ) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io {
            path: data_dir.to_owned(),
            message: format!("cannot create the data_dir: {e}"),
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = open_db(&path)?;
        let loaded = Loaded {
            slots: read_all(&db, &path)?,
            queues: read_queues(&db, &path)?,
            state: read_state(&db, &path)?,
        };
        let persist = Arc::new(Persist {
            pending: Mutex::new(Pending {
                epoch: 1,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            committed: watch::channel(0).0,
            failed: AtomicU64::new(0),
            stats: StoreStats::default(),
        });
        let writer = {
            let persist = persist.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("polyhub-store".into())
                .spawn(move || write_loop(db, &path, &persist, fsync, window))
                .map_err(|e| StoreError::Io {
                    path: data_dir.to_owned(),
                    message: format!("cannot start the store's writer thread: {e}"),
                })?
        };
        Ok((
            Store {
                persist,
                writer: Mutex::new(Some(writer)),
                path,
            },
            loaded,
        ))
    }

    /// Where the last-value store sends its changes.
    pub fn persist(&self) -> &Arc<Persist> {
        &self.persist
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is pending, then stops the writer (at shutdown).
    pub fn close(&self) {
        self.persist.pending.lock().shutdown = true;
        self.persist.wake.notify_one();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// What `polyhub check` says about a data_dir.
pub fn describe(data_dir: &Path) -> Result<String, StoreError> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(format!(
            "{}: no store yet (made at the first start)",
            path.display()
        ));
    }
    let db = open_db(&path)?;
    let slots = read_all(&db, &path)?;
    let retained = slots.iter().filter(|(_, s)| s.retained.is_some()).count();
    let queues = read_queues(&db, &path)?;
    let queued: usize = queues.values().map(Vec::len).sum();
    let mut text = format!(
        "{}: {} topics stored, {retained} with a retained value; {queued} envelopes in {} durable queues",
        path.display(),
        slots.len(),
        queues.len()
    );
    let mut names: Vec<_> = queues.iter().map(|(n, q)| (n.as_str(), q.len())).collect();
    names.sort_unstable();
    for (name, n) in names {
        text.push_str(&format!("\n  queue {name}: {n} envelopes"));
    }
    Ok(text)
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        // Permissions, a full or read-only disk: the file may be fine.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::StorageFull
            ) =>
        {
            StoreError::Io {
                path: path.to_owned(),
                message: io.to_string(),
            }
        }
        other => StoreError::Corrupt {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn read_all(db: &Database, path: &Path) -> Result<Vec<(Topic, StoredSlot)>, StoreError> {
    let txn = db.begin_read().map_err(|e| corrupt(path, e))?;
    let table = match txn.open_table(LAST_VALUES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(corrupt(path, e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| corrupt(path, e))? {
        let (k, v) = row.map_err(|e| corrupt(path, e))?;
        let topic = Topic::new(k.value())
            .map_err(|e| corrupt(path, format!("stored topic `{}`: {e}", k.value())))?;
        let slot = decode_slot(&topic, v.value())
            .map_err(|e| corrupt(path, format!("value of `{topic}`: {e}")))?;
        out.push((topic, slot));
    }
    Ok(out)
}

fn read_queues(db: &Database, path: &Path) -> Result<Queues, StoreError> {
    let txn = db.begin_read().map_err(|e| corrupt(path, e))?;
    let table = match txn.open_table(QUEUES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(corrupt(path, e)),
    };
    let mut out: Queues = HashMap::new();
    for row in table.iter().map_err(|e| corrupt(path, e))? {
        let (k, v) = row.map_err(|e| corrupt(path, e))?;
        let (queue, seq) = k.value();
        let envelope = decode_queued(v.value())
            .map_err(|e| corrupt(path, format!("queue `{queue}` entry {seq}: {e}")))?;
        out.entry(queue.to_owned())
            .or_default()
            .push((seq, Arc::new(envelope)));
    }
    Ok(out)
}

fn read_state(db: &Database, path: &Path) -> Result<HashMap<String, Vec<u8>>, StoreError> {
    let txn = db.begin_read().map_err(|e| corrupt(path, e))?;
    let table = match txn.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(corrupt(path, e)),
    };
    let mut out = HashMap::new();
    for row in table.iter().map_err(|e| corrupt(path, e))? {
        let (k, v) = row.map_err(|e| corrupt(path, e))?;
        out.insert(k.value().to_owned(), v.value().to_vec());
    }
    Ok(out)
}

fn write_loop(db: Database, path: &Path, persist: &Persist, fsync: Fsync, window: Duration) {
    let mut last_commit = Instant::now() - window;
    loop {
        let (batch, epoch, shutdown) = {
            let mut p = persist.pending.lock();
            while p.is_empty() && !p.shutdown {
                persist.wake.wait(&mut p);
            }
            if fsync == Fsync::Batch && !p.shutdown {
                // Let a batch gather, at most one commit per window.
                let due = last_commit + window;
                while !p.shutdown && Instant::now() < due {
                    let _ = persist.wake.wait_until(&mut p, due);
                }
            }
            let epoch = p.epoch;
            p.epoch += 1;
            let batch = Batch {
                changes: std::mem::take(&mut p.changes),
                queued: std::mem::take(&mut p.queued),
                state: std::mem::take(&mut p.state),
            };
            (batch, epoch, p.shutdown)
        };
        let n = (batch.changes.len() + batch.queued.len() + batch.state.len()) as u64;
        if n > 0 {
            match commit(&db, &batch, fsync) {
                Ok(()) => {
                    persist.stats.commits.fetch_add(1, Ordering::Relaxed);
                    persist.stats.writes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    persist.stats.errors.fetch_add(1, Ordering::Relaxed);
                    persist.failed.store(epoch, Ordering::Release);
                    tracing::error!(file = %path.display(), error = %e, topics = n, "Could not write to the data_dir store; retrying in 1 s (QoS 1 publishers of these values get an error).");
                    // Put back what no newer change replaced, and retry.
                    let mut p = persist.pending.lock();
                    for (topic, change) in batch.changes {
                        p.changes.entry(topic).or_insert(change);
                    }
                    for (key, entry) in batch.queued {
                        match p.queued.get(&key) {
                            // Deleted meanwhile: the put was never written,
                            // so neither is needed.
                            Some(None) if entry.is_some() => {
                                p.queued.remove(&key);
                            }
                            Some(_) => {}
                            None => {
                                p.queued.insert(key, entry);
                            }
                        }
                    }
                    for (key, value) in batch.state {
                        p.state.entry(key).or_insert(value);
                    }
                    drop(p);
                    persist.committed.send_replace(epoch);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        last_commit = Instant::now();
        persist.committed.send_replace(epoch);
        if shutdown && persist.pending.lock().is_empty() {
            return;
        }
    }
}

fn commit(db: &Database, batch: &Batch, fsync: Fsync) -> Result<(), String> {
    let changes = &batch.changes;
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    if fsync == Fsync::Never {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| e.to_string())?;
    }
    {
        let mut table = txn.open_table(LAST_VALUES).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        for (topic, change) in changes {
            match change {
                Change::Put(slot) => {
                    buf.clear();
                    encode_slot(slot, &mut buf);
                    table
                        .insert(topic.as_str(), buf.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Change::Delete => {
                    table.remove(topic.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    if !batch.queued.is_empty() {
        let mut table = txn.open_table(QUEUES).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        for ((queue, seq), entry) in &batch.queued {
            match entry {
                Some(envelope) => {
                    buf.clear();
                    encode_queued(envelope, &mut buf);
                    table
                        .insert((&**queue, *seq), buf.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    table.remove((&**queue, *seq)).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    if !batch.state.is_empty() {
        let mut table = txn.open_table(STATE).map_err(|e| e.to_string())?;
        for (key, value) in &batch.state {
            match value {
                Some(v) => {
                    table
                        .insert(key.as_str(), v.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    table.remove(key.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// An envelope's fields but the topic (the key) and the payload (stored
/// raw after the header).
#[derive(Serialize, Deserialize)]
struct Meta {
    id: u128,
    content_type: Option<String>,
    qos: u8,
    retain: bool,
    adapter: String,
    protocol: String,
    peer: Option<String>,
    user: Option<String>,
    /// Nanoseconds since the Unix epoch.
    timestamp: u64,
    headers: Vec<(String, String)>,
    reply_to: Option<String>,
    correlation: Option<Vec<u8>>,
    payload_len: u32,
}

#[derive(Serialize, Deserialize)]
struct Header {
    seq: u64,
    last: Meta,
    retained: Option<Meta>,
}

fn meta(e: &Envelope) -> Meta {
    Meta {
        id: e.id.0,
        content_type: e.content_type.clone(),
        qos: e.qos.into(),
        retain: e.retain,
        adapter: e.origin.adapter.to_string(),
        protocol: e.origin.protocol.to_string(),
        peer: e.origin.peer.as_deref().map(str::to_owned),
        user: e.origin.user.as_deref().map(str::to_owned),
        timestamp: e
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        headers: e.headers.clone(),
        reply_to: e.reply_to.clone(),
        correlation: e.correlation.as_ref().map(|c| c.to_vec()),
        payload_len: e.payload.len() as u32,
    }
}

/// `FORMAT`, the header's length (u32 LE), the header (postcard), the last
/// value's payload, the retained value's payload.
fn encode_slot(slot: &StoredSlot, out: &mut Vec<u8>) {
    let header = Header {
        seq: slot.seq,
        last: meta(&slot.last),
        retained: slot.retained.as_deref().map(meta),
    };
    let bytes = postcard::to_stdvec(&header).unwrap_or_default();
    out.push(FORMAT);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&slot.last.payload);
    if let Some(r) = &slot.retained {
        out.extend_from_slice(&r.payload);
    }
}

/// A queued envelope: `FORMAT`, the header's length (u32 LE), the header
/// (postcard: the topic and the envelope's fields), the payload.
fn encode_queued(e: &Envelope, out: &mut Vec<u8>) {
    let header = (e.topic.as_str(), meta(e));
    let bytes = postcard::to_stdvec(&header).unwrap_or_default();
    out.push(FORMAT);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&e.payload);
}

fn decode_queued(value: &[u8]) -> Result<Envelope, String> {
    let (&format, rest) = value.split_first().ok_or("empty value")?;
    if format != FORMAT {
        return Err(format!("unknown format {format}"));
    }
    if rest.len() < 4 {
        return Err("truncated".into());
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err("truncated header".into());
    }
    let (header, payload) = rest.split_at(len);
    let (topic, m): (String, Meta) = postcard::from_bytes(header).map_err(|e| e.to_string())?;
    let topic = Topic::new(&topic).map_err(|e| format!("topic `{topic}`: {e}"))?;
    if payload.len() != m.payload_len as usize {
        return Err("truncated payload".into());
    }
    envelope(&topic, m, Bytes::copy_from_slice(payload))
}

fn decode_slot(topic: &Topic, value: &[u8]) -> Result<StoredSlot, String> {
    let (&format, rest) = value.split_first().ok_or("empty value")?;
    if format != FORMAT {
        return Err(format!("unknown format {format}"));
    }
    if rest.len() < 4 {
        return Err("truncated".into());
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err("truncated header".into());
    }
    let (header, mut payloads) = rest.split_at(len);
    let header: Header = postcard::from_bytes(header).map_err(|e| e.to_string())?;
    let mut take = |m: Meta| -> Result<Arc<Envelope>, String> {
        let n = m.payload_len as usize;
        if payloads.len() < n {
            return Err("truncated payload".into());
        }
        let (payload, rest) = payloads.split_at(n);
        payloads = rest;
        Ok(Arc::new(envelope(
            topic,
            m,
            Bytes::copy_from_slice(payload),
        )?))
    };
    let last = take(header.last)?;
    let retained = header.retained.map(&mut take).transpose()?;
    Ok(StoredSlot {
        seq: header.seq,
        last,
        retained,
    })
}

fn envelope(topic: &Topic, m: Meta, payload: Bytes) -> Result<Envelope, String> {
    let mut e = Envelope::new(topic.clone(), payload);
    e.id = MessageId(m.id);
    e.content_type = m.content_type;
    e.qos = QoS::try_from(m.qos)?;
    e.retain = m.retain;
    e.origin = Origin {
        adapter: Arc::from(m.adapter),
        protocol: Arc::from(m.protocol),
        peer: m.peer.map(Arc::from),
        user: m.user.map(Arc::from),
    };
    e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_nanos(m.timestamp);
    e.headers = m.headers;
    e.reply_to = m.reply_to;
    e.correlation = m.correlation.map(Bytes::from);
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static str, retain: bool) -> Arc<Envelope> {
        let mut e = Envelope::new(Topic::new(topic).unwrap(), payload)
            .with_retain(retain)
            .with_qos(QoS::AtLeastOnce)
            .with_content_type("text/plain")
            .with_header("k", "v");
        e.origin.adapter = Arc::from("web");
        e.origin.user = Some(Arc::from("user1"));
        e.correlation = Some(Bytes::from_static(b"\x00\x01"));
        Arc::new(e)
    }

    #[test]
    fn a_slot_round_trips_with_every_field() {
        let slot = StoredSlot {
            seq: 7,
            last: env("a/b", "last", false),
            retained: Some(env("a/b", "kept", true)),
        };
        let mut buf = Vec::new();
        encode_slot(&slot, &mut buf);
        let back = decode_slot(&Topic::new("a/b").unwrap(), &buf).unwrap();
        assert_eq!(back.seq, 7);
        let same = |a: &Envelope, b: &Envelope| {
            assert_eq!(
                (a.id, &a.topic, &a.payload, &a.content_type, a.qos, a.retain),
                (b.id, &b.topic, &b.payload, &b.content_type, b.qos, b.retain)
            );
            assert_eq!(
                (
                    &a.origin,
                    a.timestamp,
                    &a.headers,
                    &a.reply_to,
                    &a.correlation
                ),
                (
                    &b.origin,
                    b.timestamp,
                    &b.headers,
                    &b.reply_to,
                    &b.correlation
                )
            );
        };
        same(&back.last, &slot.last);
        same(
            back.retained.as_ref().unwrap(),
            slot.retained.as_ref().unwrap(),
        );
        // Every truncation is an error, never a panic.
        for n in 0..buf.len() {
            assert!(
                decode_slot(&Topic::new("a/b").unwrap(), &buf[..n]).is_err(),
                "{n}"
            );
        }
    }

    #[test]
    fn values_survive_reopening_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path(), Fsync::Always, Duration::ZERO).unwrap();
        let slots = loaded.slots;
        assert!(slots.is_empty());
        let t = Topic::new("x/1").unwrap();
        let ticket = store.persist().put(
            &t,
            StoredSlot {
                seq: 1,
                last: env("x/1", "one", false),
                retained: None,
            },
        );
        store.persist().put(
            &Topic::new("x/2").unwrap(),
            StoredSlot {
                seq: 2,
                last: env("x/2", "two", true),
                retained: Some(env("x/2", "two", true)),
            },
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.persist().stored(ticket)).unwrap();
        assert!(matches!(
            describe(dir.path()),
            Err(StoreError::InUse { .. })
        ));
        assert!(matches!(
            Store::open(dir.path(), Fsync::Always, Duration::ZERO),
            Err(StoreError::InUse { .. })
        ));
        store.persist().delete(&t);
        store.close();
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), Fsync::Batch, Duration::ZERO).unwrap();
        let slots = loaded.slots;
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].0.as_str(), "x/2");
        assert_eq!(&slots[0].1.retained.as_ref().unwrap().payload[..], b"two");
        drop(_store);
        let said = describe(dir.path()).unwrap();
        assert!(
            said.contains("1 topics stored, 1 with a retained value"),
            "{said}"
        );
    }

    #[test]
    fn a_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"not a database at all, just text",
        )
        .unwrap();
        let e = Store::open(dir.path(), Fsync::Batch, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains(FILE_NAME), "{e}");
    }
}
