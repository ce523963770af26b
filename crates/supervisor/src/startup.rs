//! `agentcom startup`: the systemd units that start the supervisor at boot, as `pm2 startup`
//! writes them. Text only, no IO: the command writes, enables or prints them. Every path and
//! value is quoted for systemd (`%` specifiers and `$` expansions kept literal), and a value
//! with a control character is refused, since a newline would add directives of its own.

use std::path::Path;

/// The unit's name (`systemctl --user enable agentcom-supervisor`).
pub const UNIT: &str = "agentcom-supervisor";

/// Everything a unit says besides who runs it.
#[derive(Debug, Clone)]
pub struct UnitArgs<'a> {
    /// The agentcom binary, absolute.
    pub exe: &'a Path,
    /// The supervisor's folder (`AGENTCOM_SUPERVISOR_DIR`), absolute.
    pub dir: &'a Path,
    /// The `PATH` its processes get (the one `startup` ran with, as pm2 does).
    pub path: Option<&'a str>,
}

/// A value as systemd reads it in a quoted word: `\` and `"` escaped, `%` doubled (a
/// specifier otherwise) and, where the line is a command, `$` doubled (an expansion otherwise).
fn quoted(value: &str, command: bool) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?}: a control character cannot be written into a unit file"));
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if command => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn text(p: &Path, what: &str) -> Result<String, String> {
    if !p.is_absolute() {
        return Err(format!("{what} must be an absolute path: {}", p.display()));
    }
    p.to_str().map(str::to_string).ok_or_else(|| format!("{what} is not UTF-8: {}", p.display()))
}

fn service(a: &UnitArgs, user: Option<&str>) -> Result<String, String> {
    let exe = quoted(&text(a.exe, "the agentcom binary")?, true)?;
    let dir = quoted(&format!("AGENTCOM_SUPERVISOR_DIR={}", text(a.dir, "the supervisor folder")?), false)?;
    let mut s = String::from("[Service]\nType=simple\n");
    if let Some(u) = user {
        // systemd takes `User=` as it is, unquoted: only a name of the usual shape is written.
        let ok = u.len() <= 32
            && u.chars().enumerate().all(|(i, c)| c.is_ascii_alphanumeric() || c == '_' || (i > 0 && ".-".contains(c)));
        if u.is_empty() || !ok {
            return Err(format!("{u:?} is not a user name systemd takes (letters, digits, _ . -)"));
        }
        s.push_str(&format!("User={u}\n"));
    }
    s.push_str(&format!("ExecStart={exe} supervisor\nEnvironment={dir}\n"));
    if let Some(path) = a.path {
        s.push_str(&format!("Environment={}\n", quoted(&format!("PATH={path}"), false)?));
    }
    // The supervisor stops its processes itself (each group with its own signal and timeout)
    // on SIGTERM: systemd signals it alone, and waits longer than it may take (60 s).
    s.push_str("Restart=on-failure\nRestartSec=1\nKillMode=mixed\nTimeoutStopSec=75\n");
    Ok(s)
}

/// The unit of a user's systemd (`~/.config/systemd/user/agentcom-supervisor.service`),
/// started when the user's manager starts (at boot with lingering on).
pub fn user_unit(a: &UnitArgs) -> Result<String, String> {
    Ok(format!(
        "# Written by `agentcom startup`: starts this user's agentcom supervisor.\n\
         [Unit]\nDescription=agentcom supervisor\n\n{}\n[Install]\nWantedBy=default.target\n",
        service(a, None)?
    ))
}

/// The unit of the system's systemd (`/etc/systemd/system/agentcom-supervisor.service`): the
/// supervisor of `user`, at boot.
pub fn system_unit(a: &UnitArgs, user: &str) -> Result<String, String> {
    Ok(format!(
        "# Written by `agentcom startup --system`: starts the agentcom supervisor of {user} at boot.\n\
         [Unit]\nDescription=agentcom supervisor ({user})\nAfter=network.target\n\n{}\n[Install]\nWantedBy=multi-user.target\n",
        service(a, Some(user))?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_systemd_and_control_characters_refused() {
        let a = UnitArgs {
            exe: Path::new("/opt/my apps/agent$com"),
            dir: Path::new("/home/u/100%/sup"),
            path: Some("/usr/bin:/bin"),
        };
        let u = user_unit(&a).unwrap();
        assert!(u.contains("ExecStart=\"/opt/my apps/agent$$com\" supervisor\n"), "{u}");
        assert!(u.contains("Environment=\"AGENTCOM_SUPERVISOR_DIR=/home/u/100%%/sup\"\n"), "{u}");
        assert!(u.contains("WantedBy=default.target") && !u.contains("User="));
        let s = system_unit(&a, "alice").unwrap();
        assert!(s.contains("User=alice\n") && s.contains("WantedBy=multi-user.target"), "{s}");
        assert!(system_unit(&a, "eve\nExecStartPre=/bin/evil").unwrap_err().contains("not a user name"));
        assert!(system_unit(&a, "-rf").is_err());
        let bad = UnitArgs { dir: Path::new("/x\n[Service]\nExecStartPre=/bin/evil"), ..a.clone() };
        assert!(user_unit(&bad).unwrap_err().contains("control character"));
        let relative = UnitArgs { exe: Path::new("agentcom"), ..a };
        assert!(user_unit(&relative).unwrap_err().contains("absolute"));
    }
}
