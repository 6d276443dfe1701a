//! Spool: durable storage of received Part 10 files, behind a small interface so that shared or
//! object storage can replace the local folder.
//!
//! The receiver stages an object (written and flushed to stable storage under a temporary name),
//! records it in the database, then publishes it under its key; only then is Success sent. A
//! staged object that is never published is discarded, and leftovers of a crash are swept at
//! start-up. All methods block: call them from `spawn_blocking`.
//!
//! Several receivers may share one spool directory (a shared mount): each stages into a
//! directory of its own, `tmp/<id>/`, locked (`flock`) for as long as it runs, and a start-up
//! sweep removes only the staging directories whose lock nobody holds.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::dicom::uid::{Uid, is_received_uid as is_valid_uid};

/// A spool operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write staged object {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot sync {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot publish {from} as {to}: {source}")]
    Publish {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("invalid spool key {0:?}")]
    InvalidKey(String),
}

/// Where a published object lives: `STUDY_UID/SOP_INSTANCE_UID.dcm`, relative to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolKey(String);

impl SpoolKey {
    /// The key of an instance; both UIDs must be valid DICOM UIDs (digits and dots), so a key can
    /// never name a path outside the spool.
    pub fn for_instance(study_uid: &str, sop_instance_uid: &str) -> Result<Self, SpoolError> {
        for uid in [study_uid, sop_instance_uid] {
            if !is_valid_uid(uid) {
                return Err(SpoolError::InvalidKey(uid.to_string()));
            }
        }
        Ok(Self(format!("{study_uid}/{sop_instance_uid}.dcm")))
    }

    /// The key of an instance whose UIDs were parsed already: cannot fail.
    pub fn for_uids(study: &Uid, sop_instance: &Uid) -> Self {
        Self(format!("{study}/{sop_instance}.dcm"))
    }

    /// Rebuild a key read back from the database.
    pub fn parse(raw: &str) -> Result<Self, SpoolError> {
        let ok = raw
            .split_once('/')
            .and_then(|(study, file)| Some((study, file.strip_suffix(".dcm")?)))
            .is_some_and(|(study, sop)| is_valid_uid(study) && is_valid_uid(sop));
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(SpoolError::InvalidKey(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object written under a temporary name, not yet visible under its key: durable once
/// [`Staged::sync`] returned (or when it came from [`Storage::stage`] or
/// [`StageWriter::finish`]); [`Storage::publish`] syncs it first if it was not.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    pub size: u64,
    /// The open file, while its data may not be on stable storage yet.
    unsynced: Option<File>,
}

impl Staged {
    /// Flush the object's data (and the metadata needed to read it back) to stable storage:
    /// `fdatasync`. Blocking. On failure the object stays unsynced and must be discarded.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(file) = &self.unsynced {
            file.sync_data().map_err(|source| SpoolError::Sync {
                path: self.path.clone(),
                source,
            })?;
        }
        self.unsynced = None;
        Ok(())
    }
}

/// An object being written under a temporary name, piece by piece, while it is received.
/// Dropped without [`StageWriter::finish`], the partial object is removed.
pub trait StageWriter: Send {
    /// Append bytes.
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError>;
    /// Make what was written durable; the object is then staged.
    fn finish(self: Box<Self>) -> Result<Staged, SpoolError>;
    /// Close the object without waiting for the disk: it is staged, durable once
    /// [`Staged::sync`] returns (which a caller may run beside other work, or for several objects
    /// at once). The default waits, as [`StageWriter::finish`].
    fn close(self: Box<Self>) -> Result<Staged, SpoolError> {
        self.finish()
    }
}

/// The storage interface of the spool.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Write `parts` (concatenated) durably under a temporary name.
    fn stage(&self, parts: &[&[u8]]) -> Result<Staged, SpoolError>;
    /// Start staging an object written as it arrives.
    fn stage_writer(&self) -> Result<Box<dyn StageWriter>, SpoolError>;
    /// Make a staged object durable and visible under `key`, replacing what was there.
    fn publish(&self, staged: Staged, key: &SpoolKey) -> Result<(), SpoolError>;
    /// Publish several staged objects, as [`Storage::publish`] does each, sharing what can be
    /// shared (a directory synced once for all the objects renamed into it). All are durable
    /// under their keys when it returns `Ok`; on an error any of them may or may not be, and
    /// those not yet published are discarded.
    fn publish_all(&self, objects: Vec<(Staged, SpoolKey)>) -> Result<(), SpoolError> {
        let mut objects = objects.into_iter();
        while let Some((staged, key)) = objects.next() {
            if let Err(e) = self.publish(staged, &key) {
                objects.for_each(|(staged, _)| self.discard(staged));
                return Err(e);
            }
        }
        Ok(())
    }
    /// Drop a staged object that will not be published.
    fn discard(&self, staged: Staged);
    /// Read a published object.
    fn read(&self, key: &SpoolKey) -> Result<Vec<u8>, SpoolError>;
    /// Open a published object for reading as a stream; its length comes with it.
    fn open(&self, key: &SpoolKey) -> Result<(u64, Box<dyn io::Read + Send>), SpoolError>;
    /// Whether a published object exists under `key` (an unreadable spool counts as yes: the
    /// answer decides whether to store a copy again, never whether to drop one).
    fn exists(&self, key: &SpoolKey) -> bool;
    /// Remove a published object (retention); one already gone counts as removed.
    fn remove(&self, key: &SpoolKey) -> Result<(), SpoolError>;
    /// Remove staged leftovers of an earlier crash; returns how many were removed.
    fn sweep_staged(&self) -> Result<usize, SpoolError>;
}

/// The spool as a local (or network-mounted POSIX) directory:
/// `DIR/tmp/<id>/` for this process's staged objects, `DIR/objects/STUDY/SOP.dcm` for published
/// ones.
#[derive(Debug)]
pub struct LocalSpool {
    /// Where every receiver keeps its staging directory.
    tmp_root: PathBuf,
    /// This process's staging directory.
    tmp: PathBuf,
    objects: PathBuf,
    /// Held (locked) while this process runs: its staging directory is not swept by others.
    _lock: File,
    /// Study directories known to be durable (created and their parent synced).
    durable_dirs: Mutex<HashSet<PathBuf>>,
}

/// The lock file of a staging directory.
const LOCK_FILE: &str = ".lock";

/// Staged files of the pre-0.2 layout (directly in `tmp/`) older than this are removed.
const LEGACY_STAGED_AGE: Duration = Duration::from_secs(600);

impl LocalSpool {
    /// Open (creating if needed) a spool under `dir`, with a staging directory of our own.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let tmp_root = dir.join("tmp");
        let objects = dir.join("objects");
        for d in [&tmp_root, &objects] {
            fs::create_dir_all(d).map_err(|source| SpoolError::CreateDir {
                path: d.clone(),
                source,
            })?;
        }
        let tmp = tmp_root.join(uuid::Uuid::new_v4().simple().to_string());
        fs::create_dir(&tmp).map_err(|source| SpoolError::CreateDir {
            path: tmp.clone(),
            source,
        })?;
        let lock_path = tmp.join(LOCK_FILE);
        let lock = File::create(&lock_path)
            .and_then(|f| f.try_lock().map(|()| f).map_err(io::Error::from))
            .map_err(|source| SpoolError::Write {
                path: lock_path,
                source,
            })?;
        sync_dir(&tmp_root)?;
        sync_dir(dir)?;
        Ok(Self {
            tmp_root,
            tmp,
            objects,
            _lock: lock,
            durable_dirs: Mutex::new(HashSet::new()),
        })
    }

    /// This process's staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.tmp
    }

    /// The directory holding published objects.
    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    fn path_of(&self, key: &SpoolKey) -> PathBuf {
        self.objects.join(key.as_str())
    }

    /// Rename a (synced) staged object to its key, its study directory made durable first;
    /// returns that directory, which the caller syncs. A failed rename discards the object.
    fn rename_into_place(&self, staged: Staged, key: &SpoolKey) -> Result<PathBuf, SpoolError> {
        let target = self.path_of(key);
        let Some(parent) = target.parent().map(Path::to_path_buf) else {
            self.discard(staged);
            return Err(SpoolError::InvalidKey(key.as_str().to_string()));
        };
        if let Err(e) = self.ensure_study_dir(&parent) {
            self.discard(staged);
            return Err(e);
        }
        if let Err(source) = fs::rename(&staged.path, &target) {
            let from = staged.path.clone();
            self.discard(staged);
            return Err(SpoolError::Publish {
                from,
                to: target,
                source,
            });
        }
        Ok(parent)
    }

    /// Create a study directory if needed and make its entry durable, once per directory.
    fn ensure_study_dir(&self, parent: &Path) -> Result<(), SpoolError> {
        let known = self
            .durable_dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(parent);
        if known {
            return Ok(());
        }
        if !parent.is_dir() {
            fs::create_dir_all(parent).map_err(|source| SpoolError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        // The study directory's entry must be durable before a file in it is acknowledged,
        // also when another store (or receiver) created it a moment ago and has not synced
        // it yet: sync the parent ourselves, once per study directory.
        sync_dir(&self.objects)?;
        let mut known = self
            .durable_dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(parent.to_path_buf());
        Ok(())
    }
}

/// Write `bytes` durably as `root/KEY` (a directory laid out as the spool's objects, such as the
/// output archive): a temporary file beside the target, fsync, rename over any earlier version,
/// directory fsync; a new study directory is created and `root` synced first. The same order as
/// [`LocalSpool`]'s stage and publish. Blocking. Returns the path written.
pub fn write_durably(root: &Path, key: &SpoolKey, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
    let target = root.join(key.as_str());
    let Some(dir) = target.parent() else {
        return Err(SpoolError::InvalidKey(key.as_str().to_string()));
    };
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        sync_dir(root)?;
    }
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Write { path: tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Publish {
            from: tmp,
            to: target,
            source,
        });
    }
    sync_dir(dir)?;
    Ok(target)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SpoolError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}

impl Drop for LocalSpool {
    fn drop(&mut self) {
        // Our staging directory goes with us when nothing but its lock file is left; otherwise
        // it stays, its lock released, for the next start-up sweep.
        let only_lock = fs::read_dir(&self.tmp).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_name().to_str() == Some(LOCK_FILE))
        });
        if only_lock {
            let _ = fs::remove_file(self.tmp.join(LOCK_FILE));
            let _ = fs::remove_dir(&self.tmp);
        }
    }
}

/// Remove a staging directory whose owner is gone (nobody holds its lock); returns how many
/// staged files it held. A directory whose lock is held belongs to a running receiver.
fn sweep_abandoned(dir: &Path) -> usize {
    let lock_path = dir.join(LOCK_FILE);
    match File::open(&lock_path) {
        Ok(lock) => {
            if lock.try_lock().is_err() {
                return 0;
            }
        }
        // No lock file: its owner removed it on exit with files left behind, or the directory
        // is being created right now; only an old one is swept.
        Err(_) if is_old(dir) => {}
        Err(_) => return 0,
    }
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path != lock_path && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    let _ = fs::remove_file(&lock_path);
    let _ = fs::remove_dir(dir);
    removed
}

/// Whether a file was last modified longer ago than [`LEGACY_STAGED_AGE`].
fn is_old(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > LEGACY_STAGED_AGE)
}

/// How much a [`LocalStageWriter`] lets accumulate before asking the kernel to start writing it
/// out, so that little is left for the final fsync.
const WRITE_BEHIND_BYTES: u64 = 2 << 20;

/// A staged file written as its data arrives.
struct LocalStageWriter {
    file: Option<File>,
    path: PathBuf,
    size: u64,
    flushed: u64,
}

impl StageWriter for LocalStageWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = self.file.as_mut() else {
            return Err(SpoolError::Write {
                path: self.path.clone(),
                source: io::Error::other("writer already finished"),
            });
        };
        file.write_all(bytes).map_err(|source| SpoolError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.size += bytes.len() as u64;
        if self.size - self.flushed >= WRITE_BEHIND_BYTES {
            start_write_back(file, self.flushed, self.size - self.flushed);
            self.flushed = self.size;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Staged, SpoolError> {
        let mut staged = self.close()?;
        if let Err(e) = staged.sync() {
            let _ = fs::remove_file(&staged.path);
            return Err(e);
        }
        Ok(staged)
    }

    fn close(mut self: Box<Self>) -> Result<Staged, SpoolError> {
        let Some(file) = self.file.take() else {
            return Err(SpoolError::Write {
                path: self.path.clone(),
                source: io::Error::other("writer already finished"),
            });
        };
        // the tail goes to the disk now, while the caller does other work before the sync
        start_write_back(&file, self.flushed, self.size - self.flushed);
        Ok(Staged {
            path: std::mem::take(&mut self.path),
            size: self.size,
            unsynced: Some(file),
        })
    }
}

impl Drop for LocalStageWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Ask the kernel to start writing a range back now (Linux `sync_file_range`), without waiting.
/// Only a hint: durability still comes from the fsync in `finish`. The one `unsafe` libc call left
/// in the crate: rustix (used for every other system call) has no binding for it.
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the lifetime of `file`; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Storage for LocalSpool {
    fn stage_writer(&self) -> Result<Box<dyn StageWriter>, SpoolError> {
        let path = self
            .tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| SpoolError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(Box::new(LocalStageWriter {
            file: Some(file),
            path,
            size: 0,
            flushed: 0,
        }))
    }

    fn stage(&self, parts: &[&[u8]]) -> Result<Staged, SpoolError> {
        let path = self
            .tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let write = || -> io::Result<u64> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            let mut size = 0u64;
            for part in parts {
                f.write_all(part)?;
                size += part.len() as u64;
            }
            f.sync_all()?;
            Ok(size)
        };
        match write() {
            Ok(size) => Ok(Staged {
                path,
                size,
                unsynced: None,
            }),
            Err(source) => {
                let _ = fs::remove_file(&path);
                Err(SpoolError::Write { path, source })
            }
        }
    }

    fn publish(&self, mut staged: Staged, key: &SpoolKey) -> Result<(), SpoolError> {
        if let Err(e) = staged.sync() {
            self.discard(staged);
            return Err(e);
        }
        let parent = self.rename_into_place(staged, key)?;
        sync_dir(&parent)
    }

    fn publish_all(&self, objects: Vec<(Staged, SpoolKey)>) -> Result<(), SpoolError> {
        // every object renamed first, then each directory synced once: one journal commit
        // covers the renames of the whole batch
        let mut parents: Vec<PathBuf> = Vec::new();
        let mut objects = objects.into_iter();
        while let Some((mut staged, key)) = objects.next() {
            let renamed = match staged.sync() {
                Ok(()) => self.rename_into_place(staged, &key),
                Err(e) => {
                    self.discard(staged);
                    Err(e)
                }
            };
            match renamed {
                Ok(parent) if !parents.contains(&parent) => parents.push(parent),
                Ok(_) => {}
                Err(e) => {
                    objects.for_each(|(staged, _)| self.discard(staged));
                    return Err(e);
                }
            }
        }
        parents.iter().try_for_each(|p| sync_dir(p))
    }

    fn discard(&self, staged: Staged) {
        let _ = fs::remove_file(&staged.path);
    }

    fn read(&self, key: &SpoolKey) -> Result<Vec<u8>, SpoolError> {
        let path = self.path_of(key);
        fs::read(&path).map_err(|source| SpoolError::Read { path, source })
    }

    fn open(&self, key: &SpoolKey) -> Result<(u64, Box<dyn io::Read + Send>), SpoolError> {
        let path = self.path_of(key);
        let file = File::open(&path).map_err(|source| SpoolError::Read {
            path: path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| SpoolError::Read { path, source })?
            .len();
        Ok((len, Box::new(io::BufReader::with_capacity(1 << 16, file))))
    }

    fn exists(&self, key: &SpoolKey) -> bool {
        match fs::symlink_metadata(self.path_of(key)) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }

    fn remove(&self, key: &SpoolKey) -> Result<(), SpoolError> {
        let path = self.path_of(key);
        match fs::remove_file(&path) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                Err(SpoolError::Remove { path, source })
            }
            _ => Ok(()),
        }
    }

    fn sweep_staged(&self) -> Result<usize, SpoolError> {
        let entries = fs::read_dir(&self.tmp_root).map_err(|source| SpoolError::Read {
            path: self.tmp_root.clone(),
            source,
        })?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.tmp {
                continue;
            }
            if path.is_dir() {
                removed += sweep_abandoned(&path);
            } else if is_old(&path) && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_only_take_uids() {
        assert!(SpoolKey::for_instance("1.2.3", "1.2.3.4").is_ok());
        assert!(SpoolKey::for_instance("../etc", "1.2").is_err());
        assert!(SpoolKey::for_instance("1..2", "1.2").is_err());
        assert!(SpoolKey::for_instance("1.2", "").is_err());
        assert_eq!(
            SpoolKey::parse("1.2/3.4.dcm").unwrap().as_str(),
            "1.2/3.4.dcm"
        );
        assert!(SpoolKey::parse("1.2/../3.dcm").is_err());
    }

    #[test]
    fn stage_publish_read_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let spool = LocalSpool::open(dir.path()).unwrap();
        let key = SpoolKey::for_instance("1.2", "1.2.3").unwrap();
        let staged = spool.stage(&[b"ab", b"cd"]).unwrap();
        assert_eq!(staged.size, 4);
        spool.publish(staged, &key).unwrap();
        assert_eq!(spool.read(&key).unwrap(), b"abcd");
        // a staged file of a receiver that died is swept by the next one to start
        let left = spool.stage(&[b"x"]).unwrap();
        std::mem::forget(left);
        let staging = spool.staging_dir().to_path_buf();
        let other = LocalSpool::open(dir.path()).unwrap();
        assert_eq!(
            other.sweep_staged().unwrap(),
            0,
            "the first receiver still runs"
        );
        assert!(staging.exists());
        drop(spool);
        assert_eq!(other.sweep_staged().unwrap(), 1);
        assert!(!staging.exists());
        assert!(other.staging_dir().exists());
    }

    #[test]
    fn stage_writer_streams_and_cleans_up_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = LocalSpool::open(dir.path()).unwrap();
        let mut w = spool.stage_writer().unwrap();
        let big = vec![7u8; 3 << 20];
        w.write(b"head").unwrap();
        w.write(&big).unwrap();
        let staged = w.finish().unwrap();
        assert_eq!(staged.size, 4 + (3 << 20));
        let key = SpoolKey::for_instance("1.2", "1.2.4").unwrap();
        spool.publish(staged, &key).unwrap();
        assert_eq!(spool.read(&key).unwrap().len(), 4 + (3 << 20));
        // an abandoned writer leaves nothing behind
        let mut w = spool.stage_writer().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(spool.staging_dir()).unwrap().count(),
            1,
            "only the lock file is left"
        );
    }
}
