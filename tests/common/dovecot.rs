//! A real IMAP server for tests: Debian's dovecot (`dovecot-imapd`), run in
//! the foreground as its own process with a generated config in a temporary
//! directory (127.0.0.1 on a free port, passwd-file auth, one maildir, no
//! system config, no TLS), stopped by PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The dovecot binary Debian installs.
pub const DOVECOT: &str = "/usr/sbin/dovecot";

/// A running dovecot.
pub struct Dovecot {
    /// Its IMAP listener (plain text).
    pub addr: SocketAddr,
    /// The maildir of the one user (`cur/`, `new/`, `tmp/`).
    pub maildir: PathBuf,
    /// The user's password file (for `canary.imap.password_file`).
    pub password_file: PathBuf,
    /// The login name.
    pub user: String,
    dir: PathBuf,
    child: Option<Child>,
}

fn name_of(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Dovecot {
    /// True if dovecot is installed.
    pub fn installed() -> bool {
        Path::new(DOVECOT).exists()
    }

    /// Starts dovecot over `dir` (created; must be empty) with user `user`
    /// and password `password`; waits (at most 15 s) for its greeting.
    pub fn start(dir: &Path, user: &str, password: &str) -> Dovecot {
        let root = unsafe { libc::geteuid() } == 0;
        // As root, dovecot's processes drop to its own users and a mail user
        // must not be root: mail is read and written as nobody, so the maildir
        // is world-writable. Otherwise everything runs as the caller.
        let (internal, internal_group, login, uid, gid) = if root {
            (
                "dovecot".to_owned(),
                "dovecot".to_owned(),
                "dovenull".to_owned(),
                65534,
                65534,
            )
        } else {
            let me = name_of("id", "-un");
            let group = name_of("id", "-gn");
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            (me.clone(), group, me, uid, gid)
        };
        let maildir = dir.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("maildir");
        }
        if root {
            use std::os::unix::fs::PermissionsExt;
            let open = |p: &Path, mode| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
            };
            open(dir, 0o755);
            open(&maildir, 0o777);
            for sub in ["cur", "new", "tmp"] {
                open(&maildir.join(sub), 0o777);
            }
        }
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, format!("{user}:{{PLAIN}}{password}\n")).expect("passwd");
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{password}\n")).expect("password file");
        let port = super::free_port();
        let d = dir.display();
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain login\nmail_location = maildir:{maildir}\n\
             default_internal_user = {internal}\ndefault_internal_group = {internal_group}\n\
             default_login_user = {login}\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {passwd}\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/home\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            maildir = maildir.display(),
            passwd = passwd.display(),
        );
        let conf_path = dir.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("dovecot.conf");
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dovecot");
        let addr = super::loopback(port);
        let mut d = Dovecot {
            addr,
            maildir,
            password_file,
            user: user.to_owned(),
            dir: dir.to_owned(),
            child: Some(child),
        };
        if !d.wait_ready(Duration::from_secs(15)) {
            let log = std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default();
            d.stop();
            panic!("dovecot did not greet on {addr} within 15 s; its log:\n{log}");
        }
        d
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        use std::io::Read;
        let deadline = Instant::now() + timeout;
        for _ in 0..1_000 {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false; // it exited
            }
            if let Ok(mut s) =
                std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))
            {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"* OK" {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Every file in the maildir (`new/` and `cur/`) and its contents.
    pub fn messages(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for e in entries.flatten().take(10_000) {
                if let Ok(text) = std::fs::read(e.path()) {
                    out.push((e.path(), String::from_utf8_lossy(&text).into_owned()));
                }
            }
        }
        out
    }

    /// dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// SIGTERM to its PID, then (after 10 s) SIGKILL; waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..1_000 {
            if !matches!(child.try_wait(), Ok(None)) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}
