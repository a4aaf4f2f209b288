//! `junokv dev`, the real binary, in a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct DevProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    /// Its plain-text client address.
    pub plain: String,
    /// Its admin address, when started with `--admin-listen`.
    pub admin: Option<String>,
    log: PathBuf,
}

impl DevProcess {
    /// Starts `junokv ARGS dev DEV_ARGS` on free loopback ports, logging `rust_log`
    /// (`RUST_LOG`) to a file.
    pub fn start(args: &[&str], dev_args: &[&str], rust_log: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), args, dev_args, rust_log)
    }

    /// [`DevProcess::start`] over the data a stopped one left in `dir`.
    pub fn start_in(
        dir: tempfile::TempDir,
        args: &[&str],
        dev_args: &[&str],
        rust_log: &str,
    ) -> Self {
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_junokv"))
            .args(args)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
            ])
            .args(dev_args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        // "... clients connect to ADDR (plain text) or ..."
        let plain = banner
            .split("connect to ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_string();
        // "junokv dev: admin port http://ADDR"
        let admin = dev_args.contains(&"--admin-listen").then(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let addr = line.trim().rsplit("http://").next().unwrap_or_default();
            addr.to_string()
        });
        DevProcess {
            child,
            dir,
            plain,
            admin,
            log,
        }
    }

    /// Runs `junokv ARGS --proxy PLAIN`: its exit code and standard output.
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        self.run(args, &["--proxy", &self.plain])
    }

    /// Runs `junokv ARGS MORE`: its exit code and standard output.
    pub fn run(&self, args: &[&str], more: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_junokv"))
            .args(args)
            .args(more)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code().unwrap_or(-1), stdout)
    }

    /// Stops it with SIGTERM (it must exit cleanly) and returns what it logged.
    pub fn stop(self) -> String {
        self.stop_keeping_data().1
    }

    /// [`DevProcess::stop`], handing back its directory (for [`DevProcess::start_in`]).
    pub fn stop_keeping_data(mut self) -> (tempfile::TempDir, String) {
        let killed = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        assert!(
            self.child.wait().unwrap().success(),
            "junokv dev exits cleanly on SIGTERM"
        );
        let log = std::fs::read_to_string(&self.log).unwrap();
        (self.dir, log)
    }
}
