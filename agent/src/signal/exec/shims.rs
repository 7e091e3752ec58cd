//! Version-manager shims: `~/.pyenv/shims/python3` is not the interpreter
//! but a small script that picks one. A shim first on PATH is the manager
//! working as designed, never "shadowing"; what matters is which version it
//! picks, and why.
//!
//! Owns: recognising shim directories (pyenv, goenv, rbenv, nodenv, asdf,
//! mise, volta, conda's `condabin`) and, for the managers whose choice is a
//! file or a variable, the choice: version, where it was set, the binary.
//! Must not: run the manager (`pyenv version` would exec on every shim run).

use serde::Serialize;

use crate::process::fsview::{FsView, basename, join, parent};

/// A shim that ran, and what it picks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shim {
    /// `pyenv`, `asdf`, …
    pub manager: &'static str,
    /// The version selected (`3.12.1`, `system`), when it can be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where that was decided: `PYENV_VERSION=3.12.1 in the environment`,
    /// `/src/x/.python-version`, `/root/.pyenv/version (global)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    /// The binary the shim will run, when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A manager that selects by variable, per-directory file and global file,
/// like pyenv: `<root>/shims/<cmd>` → `<root>/versions/<v>/bin/<cmd>`.
struct RbenvLike {
    manager: &'static str,
    /// The root's directory name under `$HOME`.
    home_dir: &'static str,
    variable: &'static str,
    local_file: &'static str,
}

const RBENV_LIKE: &[RbenvLike] = &[
    RbenvLike {
        manager: "pyenv",
        home_dir: ".pyenv",
        variable: "PYENV_VERSION",
        local_file: ".python-version",
    },
    RbenvLike {
        manager: "goenv",
        home_dir: ".goenv",
        variable: "GOENV_VERSION",
        local_file: ".go-version",
    },
    RbenvLike {
        manager: "rbenv",
        home_dir: ".rbenv",
        variable: "RBENV_VERSION",
        local_file: ".ruby-version",
    },
    RbenvLike {
        manager: "nodenv",
        home_dir: ".nodenv",
        variable: "NODENV_VERSION",
        local_file: ".node-version",
    },
];

/// The manager whose shim directory `dir` is, if any.
pub fn manager_of_dir(fs: &FsView, dir: &str) -> Option<&'static str> {
    let dir = dir.trim_end_matches('/');
    let root = parent(dir)?;
    match basename(dir) {
        "shims" => {
            for m in RBENV_LIKE {
                if basename(root) == m.home_dir
                    || fs.is_dir(&join(root, &format!("libexec/{}", m.manager)))
                {
                    return Some(m.manager);
                }
            }
            if basename(root) == ".asdf" || fs.is_dir(&join(root, "lib/commands")) {
                return Some("asdf");
            }
            if basename(root) == "mise" {
                return Some("mise");
            }
            // pyenv plugins keep their own shims (pyenv-virtualenv's `activate`).
            if basename(parent(root)?) == "plugins" {
                return Some("pyenv");
            }
            None
        }
        "bin" if basename(root) == ".volta" => Some("volta"),
        "condabin" if fs.is_dir(&join(root, "conda-meta")) => Some("conda"),
        _ => None,
    }
}

/// First version named in a version file (`3.12.1`; `#` comment lines
/// skipped; in a variable, versions are separated by `:`).
fn first_version(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ':'))
        .find(|w| !w.is_empty())
        .map(str::to_string)
}

/// What the shim at `path` (for command `cmd`) picks, given the process's
/// environment, working directory and PATH.
pub fn resolve(
    fs: &FsView,
    path: &str,
    cwd: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Shim> {
    let dir = parent(path)?;
    let manager = manager_of_dir(fs, dir)?;
    let cmd = basename(path);
    let mut shim = Shim {
        manager,
        version: None,
        set_by: None,
        target: None,
    };
    let Some(m) = RBENV_LIKE.iter().find(|m| m.manager == manager) else {
        return Some(shim);
    };
    let root = parent(dir)?;
    let (version, set_by) = if let Some(v) = env(m.variable).filter(|v| !v.is_empty()) {
        (
            first_version(&v),
            format!("{}={v} in the environment", m.variable),
        )
    } else if let Some((f, v)) = cwd
        .and_then(|c| fs.find_up(c, m.local_file))
        .and_then(|f| Some((f.clone(), first_version(&fs.read_to_string(&f, 4096)?)?)))
    {
        (Some(v), f)
    } else {
        let global = join(root, "version");
        match fs
            .read_to_string(&global, 4096)
            .and_then(|t| first_version(&t))
        {
            Some(v) => (Some(v), format!("{global} (global)")),
            None => (
                Some("system".into()),
                "no version set anywhere (the default: system)".into(),
            ),
        }
    };
    shim.target = match version.as_deref() {
        Some("system") => {
            // The first `cmd` on PATH outside the manager's directories.
            env("PATH").and_then(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty() && !d.starts_with(root))
                    .map(|d| join(d, cmd))
                    .find(|c| fs.stat(c).is_some_and(|m| m.executable()))
            })
        }
        Some(v) => Some(join(root, &format!("versions/{v}/bin/{cmd}")))
            .filter(|t| fs.stat(t).is_some_and(|m| m.executable())),
        None => None,
    };
    shim.version = version;
    shim.set_by = Some(set_by);
    Some(shim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fsview::tests::tempdir;
    use std::os::unix::fs::PermissionsExt as _;

    fn exe(p: &std::path::Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn pyenv_choice_by_variable_local_file_global_file_and_system() {
        let d = tempdir("shims");
        let root = d.join(".pyenv");
        exe(&root.join("shims/python3"));
        exe(&root.join("versions/3.12.1/bin/python3"));
        exe(&root.join("versions/3.11.7/bin/python3"));
        exe(&d.join("usr/bin/python3"));
        std::fs::create_dir_all(d.join("src/x/deep")).unwrap();
        let fs = FsView::host();
        let shim = root.join("shims/python3").display().to_string();
        let path = format!(
            "{}:{}",
            root.join("shims").display(),
            d.join("usr/bin").display()
        );
        let cwd = d.join("src/x/deep").display().to_string();
        let envf = |vars: Vec<(&'static str, String)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        // Nothing set: system, the next python3 on PATH.
        let s = resolve(&fs, &shim, Some(&cwd), envf(vec![("PATH", path.clone())])).unwrap();
        assert_eq!(s.manager, "pyenv");
        assert_eq!(s.version.as_deref(), Some("system"));
        assert_eq!(
            s.target,
            Some(d.join("usr/bin/python3").display().to_string())
        );
        // Global file.
        std::fs::write(root.join("version"), "3.11.7\n").unwrap();
        let s = resolve(&fs, &shim, Some(&cwd), envf(vec![])).unwrap();
        assert_eq!(s.version.as_deref(), Some("3.11.7"));
        assert!(
            s.set_by
                .as_deref()
                .unwrap()
                .ends_with(".pyenv/version (global)")
        );
        assert!(s.target.unwrap().ends_with("versions/3.11.7/bin/python3"));
        // A .python-version above the working directory wins over it.
        std::fs::write(d.join("src/x/.python-version"), "# pinned\n3.12.1\n").unwrap();
        let s = resolve(&fs, &shim, Some(&cwd), envf(vec![])).unwrap();
        assert_eq!(s.version.as_deref(), Some("3.12.1"));
        assert_eq!(
            s.set_by,
            Some(d.join("src/x/.python-version").display().to_string())
        );
        // PYENV_VERSION wins over both; a version not installed has no target.
        let s = resolve(
            &fs,
            &shim,
            Some(&cwd),
            envf(vec![("PYENV_VERSION", "3.9.1:3.12.1".into())]),
        )
        .unwrap();
        assert_eq!(s.version.as_deref(), Some("3.9.1"));
        assert_eq!(
            s.set_by.as_deref(),
            Some("PYENV_VERSION=3.9.1:3.12.1 in the environment")
        );
        assert_eq!(s.target, None);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn other_managers_are_recognised_and_plain_dirs_are_not() {
        let d = tempdir("shimdirs");
        for sub in [
            ".asdf/shims",
            "share/mise/shims",
            ".volta/bin",
            "conda/condabin",
            "conda/conda-meta",
            "usr/bin",
            "x/shims",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let fs = FsView::host();
        let m = |s: &str| manager_of_dir(&fs, &d.join(s).display().to_string());
        assert_eq!(m(".asdf/shims"), Some("asdf"));
        assert_eq!(m("share/mise/shims"), Some("mise"));
        assert_eq!(m(".volta/bin"), Some("volta"));
        assert_eq!(m("conda/condabin"), Some("conda"));
        assert_eq!(m("usr/bin"), None);
        assert_eq!(m("x/shims"), None);
        std::fs::remove_dir_all(d).ok();
    }

    /// The machine's own pyenv (present on this image): its shim dir is
    /// recognised from the layout, wherever the root is.
    #[test]
    fn the_real_pyenv_is_recognised_when_installed() {
        let Some(home) = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pyenv")))
        else {
            return;
        };
        if !home.join("libexec/pyenv").exists() {
            return;
        }
        let fs = FsView::host();
        assert_eq!(
            manager_of_dir(&fs, &home.join("shims").display().to_string()),
            Some("pyenv")
        );
    }
}
