//! Snapshot files: `snapshots/<index>.snap` in the node's directory, written to a temporary
//! file, fsynced, renamed into place and the directory fsynced, so a snapshot file either exists
//! whole or not at all. The WAL records which snapshot the log starts after; older files are
//! pruned once a newer one is safely in place.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::core::Index;

use super::SnapshotSource;

/// How many snapshot files to keep: the newest may not be recorded in the WAL yet.
const SNAPSHOTS_KEPT: usize = 2;

#[derive(Clone, Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    sync: bool,
}

impl SnapshotStore {
    pub(crate) fn open(dir: &Path, sync: bool) -> io::Result<Self> {
        let dir = dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, sync })
    }

    fn path(&self, index: Index) -> PathBuf {
        self.dir.join(format!("{index:020}.snap"))
    }

    pub(crate) fn save(&self, index: Index, source: &mut dyn SnapshotSource) -> io::Result<()> {
        let tmp = self.dir.join(format!("{index:020}.snap.tmp"));
        {
            let mut file = io::BufWriter::new(fs::File::create(&tmp)?);
            source.write_to(&mut file)?;
            file.flush()?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            if self.sync {
                file.sync_all()?;
            }
        }
        fs::rename(&tmp, self.path(index))?;
        if self.sync {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        self.prune()
    }

    pub(crate) fn save_bytes(&self, index: Index, data: &Bytes) -> io::Result<()> {
        struct Raw<'a>(&'a [u8]);
        impl SnapshotSource for Raw<'_> {
            fn write_to(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
                out.write_all(self.0)
            }
        }
        self.save(index, &mut Raw(data))
    }

    pub(crate) fn load(&self, index: Index) -> io::Result<Bytes> {
        fs::read(self.path(index)).map(Bytes::from)
    }

    /// Removes all but the newest snapshot files.
    fn prune(&self) -> io::Result<()> {
        let mut snaps: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        snaps.sort();
        let excess = snaps.len().saturating_sub(SNAPSHOTS_KEPT);
        for old in &snaps[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}
