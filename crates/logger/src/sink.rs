//! The file copy of the call log: lines appended through a buffer, the file reopened on SIGHUP
//! so logrotate can rename it away (the next line goes to a fresh file at the configured path).
//!
//! A failing disk must not stop the console: write errors are reported once (until the file
//! works again) and the lines meanwhile are counted, not retried.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::LoggerError;

/// Buffer in front of the file; flushed whenever the event queue runs empty.
const FILE_BUFFER: usize = 64 * 1024;

pub struct FileSink {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Lines lost since the last successful write (reported when writing works again).
    lost_lines: u64,
}

impl FileSink {
    /// Create the directory if needed and open `path` for appending.
    pub fn open(path: &Path) -> Result<Self, LoggerError> {
        let file = open_append(path)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Some(BufWriter::with_capacity(FILE_BUFFER, file)),
            lost_lines: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append bytes (whole lines).
    pub fn write(&mut self, line: &[u8]) {
        let Some(writer) = self.writer.as_mut() else {
            self.lost_lines += 1;
            return;
        };
        if let Err(e) = writer.write_all(line) {
            self.fail(&e);
        }
    }

    pub fn flush(&mut self) {
        if let Some(writer) = self.writer.as_mut()
            && let Err(e) = writer.flush()
        {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        tracing::error!(path = %self.path.display(), error = %e,
            "writing the log file failed; lines are dropped until SIGHUP reopens it");
        // Drop the writer without flushing again (BufWriter's drop would retry the write).
        if let Some(writer) = self.writer.take() {
            let _ = writer.into_parts();
        }
        self.lost_lines += 1;
    }

    /// Flush and reopen the file at its path (after logrotate moved it away).
    pub fn reopen(&mut self) -> Result<(), LoggerError> {
        self.flush();
        self.writer = None;
        let file = open_append(&self.path)?;
        self.writer = Some(BufWriter::with_capacity(FILE_BUFFER, file));
        if self.lost_lines > 0 {
            tracing::warn!(path = %self.path.display(), lines = self.lost_lines,
                "log file reopened; lines were lost while it failed");
            self.lost_lines = 0;
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.flush();
    }
}

fn open_append(path: &Path) -> Result<File, LoggerError> {
    let err = |source| LoggerError::File {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn creates_directory_appends_and_reopens_after_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/calls/observer.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old line\n").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(b"one\n");
        sink.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old line\none\n");

        let rotated = dir.path().join("observer.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.write(b"two\n");
        sink.reopen().unwrap();
        sink.write(b"three\n");
        sink.flush();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "old line\none\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }

    #[test]
    fn missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.log");
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(b"x\n");
        drop(sink);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
    }

    #[test]
    fn unusable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = FileSink::open(&blocker.join("sub/observer.log"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("cannot open log file"), "{text}");
        assert!(text.contains("--no-file"), "{text}");
    }
}
