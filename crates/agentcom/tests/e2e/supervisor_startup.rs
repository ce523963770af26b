//! `agentcom startup`, as `pm2 startup`: a systemd user unit written and enabled (or, with no
//! user systemd to ask, written and said so with exit code 2), a system unit printed with
//! `--system`; every unit is one `systemd-analyze verify` accepts.

use crate::bin;
use std::path::Path;
use std::process::{Command, Output};

type R = anyhow::Result<()>;

/// `systemd-analyze verify` on a unit file: its complaints, if any (a warning is one too).
fn verify(unit: &Path) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .map_err(|e| format!("systemd-analyze is required (scripts/test installs the systemd package): {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && err.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {err}", out.status))
    }
}

/// `agentcom startup ARGS` for a user whose home is `home`, with a `systemctl` that logs its
/// arguments to `home/systemctl.log` and exits with `code`.
fn startup(home: &Path, code: i32, args: &[&str]) -> anyhow::Result<Output> {
    let fake = home.join("bin");
    std::fs::create_dir_all(&fake)?;
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\n[ {code} = 0 ] || echo 'Failed to connect to bus: No medium found' >&2\nexit {code}\n",
        home.join("systemctl.log").display()
    );
    let systemctl = fake.join("systemctl");
    std::fs::write(&systemctl, script)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))?;
    }
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    Ok(Command::new(bin())
        .arg("startup")
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("PATH", path)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("AGENTCOM_SUPERVISOR_DIR")
        .output()?)
}

#[test]
fn startup_writes_and_enables_a_user_unit_systemd_accepts() -> R {
    let home = tempfile::tempdir()?;
    let out = startup(home.path(), 0, &[])?;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let file = home.path().join(".config/systemd/user/agentcom-supervisor.service");
    let unit = std::fs::read_to_string(&file)?;
    let exe = bin().canonicalize()?;
    assert!(unit.contains(&format!("ExecStart=\"{}\" supervisor\n", exe.display())), "{unit}");
    let dir = home.path().join(".agentcom/supervisor");
    assert!(unit.contains(&format!("Environment=\"AGENTCOM_SUPERVISOR_DIR={}\"\n", dir.display())), "{unit}");
    assert!(unit.contains("Restart=on-failure\n") && unit.contains("WantedBy=default.target\n"), "{unit}");
    let calls = std::fs::read_to_string(home.path().join("systemctl.log"))?;
    assert_eq!(calls, "--user daemon-reload\n--user enable agentcom-supervisor\n");
    verify(&file).map_err(anyhow::Error::msg)?;
    // --print shows the same unit and writes nothing.
    std::fs::remove_file(&file)?;
    let out = startup(home.path(), 0, &["--print"])?;
    assert_eq!(String::from_utf8(out.stdout)?, unit);
    assert!(!file.exists());
    Ok(())
}

#[test]
fn startup_without_a_user_systemd_writes_the_unit_and_says_what_to_run() -> R {
    let home = tempfile::tempdir()?;
    let out = startup(home.path(), 1, &[])?;
    assert_eq!(out.status.code(), Some(2), "written but not enabled");
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("error: the unit is written but not enabled: Failed to connect to bus"), "{err}");
    assert!(err.contains("systemctl --user daemon-reload && systemctl --user enable agentcom-supervisor"), "{err}");
    assert!(home.path().join(".config/systemd/user/agentcom-supervisor.service").exists());
    Ok(())
}

#[test]
fn startup_system_prints_a_system_unit_with_its_user() -> R {
    let home = tempfile::tempdir()?;
    let out = startup(home.path(), 0, &["--system", "--user", "root"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = String::from_utf8(out.stdout)?;
    assert!(unit.contains("User=root\n") && unit.contains("WantedBy=multi-user.target\n"), "{unit}");
    assert!(String::from_utf8(out.stderr)?.contains("systemctl daemon-reload && systemctl enable --now"));
    assert!(!home.path().join("systemctl.log").exists(), "--system changes nothing");
    let file = home.path().join("agentcom-supervisor.service");
    std::fs::write(&file, &unit)?;
    verify(&file).map_err(anyhow::Error::msg)?;
    let out = startup(home.path(), 0, &["--system", "--user", "no-such-user-here"])?;
    assert!(String::from_utf8(out.stderr)?.contains("no user named no-such-user-here"));
    Ok(())
}
