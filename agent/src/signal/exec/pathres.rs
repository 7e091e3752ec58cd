//! PATH reconstruction: from the PATH and cwd a process had, every candidate
//! for a bare command name in search order, and which one the kernel ran.
//!
//! Owns: pure resolution through an [`FsView`]; no judgement.

use serde::Serialize;

use crate::process::fsview::{FsView, join};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandState {
    /// Exists and is executable: execvp would run it.
    Executable,
    /// Exists but has no execute bit (execvp skips it with EACCES).
    NotExecutable,
    /// A directory with that name.
    Directory,
    Missing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// PATH entry as written (empty = cwd).
    pub entry: String,
    /// Absolute path tried.
    pub path: String,
    pub state: CandState,
    /// `(dev, ino)` of the file, for "same file through another link".
    #[serde(skip)]
    pub file_id: Option<(u64, u64)>,
    /// Symlinks resolved.
    pub canonical: Option<String>,
}

/// Every candidate for `name` along `path_var`; relative entries use `cwd`.
pub fn candidates(fs: &FsView, name: &str, path_var: &str, cwd: Option<&str>) -> Vec<Candidate> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for entry in path_var.split(':') {
        let dir = if entry.is_empty() || !entry.starts_with('/') {
            match cwd {
                Some(c) if entry.is_empty() => c.to_string(),
                Some(c) => join(c, entry),
                None => continue,
            }
        } else {
            entry.to_string()
        };
        let path = join(&dir, name);
        if entries.iter().any(|(_, p)| *p == path) {
            continue; // a repeated PATH entry adds nothing
        }
        entries.push((entry.to_string(), path));
    }
    // One question for the whole search (see `FsView::stat_many`).
    let paths: Vec<String> = entries.iter().map(|(_, p)| p.clone()).collect();
    let found = fs.stat_many(&paths);
    entries
        .into_iter()
        .zip(found)
        .map(|((entry, path), f)| {
            let meta = f.as_ref().map(|(m, _)| *m);
            let state = match meta {
                None => CandState::Missing,
                Some(m) if m.is_dir => CandState::Directory,
                Some(m) if m.executable() => CandState::Executable,
                Some(_) => CandState::NotExecutable,
            };
            Candidate {
                entry,
                canonical: f.and_then(|(_, c)| c),
                file_id: meta.map(|m| (m.dev, m.ino)),
                path,
                state,
            }
        })
        .collect()
}

pub fn winner(fs: &FsView, cands: &[Candidate], exe: &str) -> Option<usize> {
    if let Some(i) = cands.iter().position(|c| c.path == exe) {
        return Some(i);
    }
    let canon = fs.canonical(exe);
    if let Some(i) = cands
        .iter()
        .position(|c| canon.is_some() && c.canonical == canon)
    {
        return Some(i);
    }
    let id = fs.stat(exe).map(|m| (m.dev, m.ino));
    cands
        .iter()
        .position(|c| id.is_some() && c.file_id == id && c.state == CandState::Executable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fsview::tests::tempdir;
    use std::os::unix::fs::PermissionsExt as _;

    fn exe(root: &std::path::Path, p: &str) {
        let full = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn order_states_and_winner() {
        let root = tempdir("pathres");
        exe(&root, "/opt/conda/envs/x/bin/go");
        exe(&root, "/usr/local/go/bin/go");
        std::fs::create_dir_all(root.join("home/u/bin/go")).unwrap();
        std::fs::write(root.join("home/u/noexec-go"), b"").unwrap();
        let fs = FsView::new(&root);
        let c = candidates(
            &fs,
            "go",
            "/nope:/home/u/bin:/opt/conda/envs/x/bin:/usr/local/go/bin:/opt/conda/envs/x/bin",
            None,
        );
        let states: Vec<_> = c.iter().map(|c| c.state.clone()).collect();
        assert_eq!(
            states,
            vec![
                CandState::Missing,
                CandState::Directory,
                CandState::Executable,
                CandState::Executable
            ]
        );
        assert_eq!(winner(&fs, &c, "/opt/conda/envs/x/bin/go"), Some(2));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn empty_and_relative_entries_use_cwd() {
        let root = tempdir("pathres2");
        exe(&root, "/work/tools/go");
        let fs = FsView::new(&root);
        let c = candidates(&fs, "go", ":tools", Some("/work"));
        assert_eq!(c[0].path, "/work/go");
        assert_eq!(c[1].path, "/work/tools/go");
        assert_eq!(c[1].state, CandState::Executable);
        // Without a cwd, relative entries can't be resolved and are skipped.
        assert!(candidates(&fs, "go", ":tools", None).is_empty());
        std::fs::remove_dir_all(root).ok();
    }
}
