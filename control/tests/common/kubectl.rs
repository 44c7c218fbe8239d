//! kubectl as tests run it: a binary named by the environment (`KEELSON_KUBECTL` for Debian's,
//! `KEELSON_KUBECTL_CURRENT` for the current release), a kubeconfig for one server, and a cache
//! directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The seed's nginx Deployment (three replicas of nginx:1.14.2).
pub const SEED_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
";

pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

/// The kubectl binary named by the environment variable `var`; a test fails without it.
pub fn kubectl_binary(var: &str) -> PathBuf {
    let binary = PathBuf::from(
        std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} must name a kubectl (scripts/test sets it; scripts/setup installs it)")),
    );
    assert!(binary.is_file(), "{} missing: run scripts/setup", binary.display());
    binary
}

impl Kubectl {
    /// Debian's kubectl, with the credentials of `kubeconfig`.
    pub fn new(dir: &Path, kubeconfig: &Path) -> Kubectl {
        Self::with_binary(kubectl_binary("KEELSON_KUBECTL"), dir, kubeconfig)
    }

    /// `binary`, with a copy of `kubeconfig` (the server and credentials a process wrote).
    pub fn with_binary(binary: PathBuf, dir: &Path, kubeconfig: &Path) -> Kubectl {
        let text = std::fs::read_to_string(kubeconfig)
            .unwrap_or_else(|e| panic!("cannot read the kubeconfig {}: {e}", kubeconfig.display()));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, text).unwrap();
        Kubectl { binary, kubeconfig, cache: dir.join("cache") }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .env("HOME", self.cache.parent().unwrap())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        cmd
    }

    /// Runs kubectl; its stdout, or a panic with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, None)
    }

    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        let (ok, stdout, stderr) = self.try_run(args, input);
        assert!(ok, "kubectl {args:?} failed\nstdout: {stdout}\nstderr: {stderr}");
        stdout
    }

    /// Runs kubectl; whether it succeeded, its stdout and its stderr.
    pub fn try_run(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(text) = input {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), stdout.into_owned(), stderr.into_owned())
    }
}

/// A path made into a directory as it is named (kubectl's home and cache for each client).
#[allow(dead_code)]
pub trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
