//! Python environment identity of a path: the conda prefix (a directory with
//! `conda-meta/`) or venv (`pyvenv.cfg`) that contains it, and the `#!`
//! interpreter of scripts (pip, conda entry points).
//!
//! Owns: pure lookups through an [`FsView`].

use serde::Serialize;

use crate::process::fsview::{FsView, basename, parent};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PyEnv {
    /// A conda prefix; `name` is the env name (`base` for the root prefix).
    Conda { prefix: String, name: String },
    /// A virtualenv / `python -m venv`.
    Venv { prefix: String },
}

impl PyEnv {
    pub fn prefix(&self) -> &str {
        match self {
            PyEnv::Conda { prefix, .. } | PyEnv::Venv { prefix } => prefix,
        }
    }

    pub fn label(&self) -> String {
        match self {
            PyEnv::Conda { name, prefix } => format!("conda env {name} ({prefix})"),
            PyEnv::Venv { prefix } => format!("venv {prefix}"),
        }
    }
}

/// The environment whose prefix contains `path` (checked up to 8 levels up).
pub fn env_of(fs: &FsView, path: &str) -> Option<PyEnv> {
    let mut dir = parent(path)?;
    for _ in 0..8 {
        if fs.is_dir(&crate::process::fsview::join(dir, "conda-meta")) {
            let name = match parent(dir) {
                Some(p) if basename(p) == "envs" => basename(dir).to_string(),
                _ => "base".to_string(),
            };
            return Some(PyEnv::Conda {
                prefix: dir.to_string(),
                name,
            });
        }
        if fs
            .stat(&crate::process::fsview::join(dir, "pyvenv.cfg"))
            .is_some_and(|m| m.is_file)
        {
            return Some(PyEnv::Venv {
                prefix: dir.to_string(),
            });
        }
        dir = parent(dir)?;
        if dir == "/" {
            return None;
        }
    }
    None
}

/// `#!` interpreter path (first word after `#!`) of a script, if it is one.
/// `#!/usr/bin/env python3` yields `/usr/bin/env` and `python3` as the argument.
pub fn shebang(fs: &FsView, path: &str) -> Option<(String, Option<String>)> {
    let head = fs.read_head(path, 256)?;
    parse_shebang(&head)
}

pub fn parse_shebang(head: &[u8]) -> Option<(String, Option<String>)> {
    let rest = head.strip_prefix(b"#!")?;
    let line_end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
    let line = String::from_utf8_lossy(&rest[..line_end]);
    let mut it = line.split_whitespace();
    let interp = it.next()?.to_string();
    let arg = it.next().map(str::to_string);
    Some((interp, arg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fsview::tests::tempdir;

    #[test]
    fn conda_env_names_and_venvs() {
        let root = tempdir("pyenv");
        for d in [
            "opt/conda/conda-meta",
            "opt/conda/bin",
            "opt/conda/envs/go-dev/conda-meta",
            "opt/conda/envs/go-dev/bin",
            "home/u/v/bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("home/u/v/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let fs = FsView::new(&root);
        assert_eq!(
            env_of(&fs, "/opt/conda/envs/go-dev/bin/go"),
            Some(PyEnv::Conda {
                prefix: "/opt/conda/envs/go-dev".into(),
                name: "go-dev".into()
            })
        );
        assert_eq!(
            env_of(&fs, "/opt/conda/bin/python"),
            Some(PyEnv::Conda {
                prefix: "/opt/conda".into(),
                name: "base".into()
            })
        );
        assert_eq!(
            env_of(&fs, "/home/u/v/bin/pip"),
            Some(PyEnv::Venv {
                prefix: "/home/u/v".into()
            })
        );
        assert_eq!(env_of(&fs, "/usr/bin/python3"), None);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn shebangs() {
        assert_eq!(
            parse_shebang(b"#!/opt/conda/envs/a/bin/python3.11\nimport x"),
            Some(("/opt/conda/envs/a/bin/python3.11".into(), None))
        );
        assert_eq!(
            parse_shebang(b"#! /usr/bin/env python3\n"),
            Some(("/usr/bin/env".into(), Some("python3".into())))
        );
        assert_eq!(parse_shebang(b"\x7fELF"), None);
        assert_eq!(parse_shebang(b"#!"), None);
    }
}
