//! The scrubber's rules, case by case: each secret is gone, the diagnostic
//! part (flag, user name, host, path, header scheme) stays.

use super::*;

fn sv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// (argv, must stay, must go)
const ARGV_CASES: &[(&[&str], &[&str], &[&str])] = &[
    (
        &["curl", "-u", "alice:SECRET1", "https://h/x"],
        &["-u", "alice:", "https://h/x"],
        &["SECRET1"],
    ),
    (
        &["curl", "--user", "alice:SECRET1", "h"],
        &["--user", "alice:"],
        &["SECRET1"],
    ),
    (
        &["curl", "--user=alice:SECRET1", "h"],
        &["--user=alice:"],
        &["SECRET1"],
    ),
    (
        &["curl", "-U", "proxyuser:SECRET1", "h"],
        &["proxyuser:"],
        &["SECRET1"],
    ),
    (
        &["curl", "--proxy-user", "p:SECRET1"],
        &["--proxy-user", "p:"],
        &["SECRET1"],
    ),
    (&["curl", "-u", "alice", "h"], &["alice"], &[]),
    (&["sort", "-u", "file"], &["-u", "file"], &[]),
    (
        &[
            "curl",
            "-H",
            "Authorization: Bearer SECRET1",
            "https://api/x",
        ],
        &["Authorization: Bearer", "https://api/x"],
        &["SECRET1"],
    ),
    (
        &["curl", "-H", "authorization: basic SECRET1"],
        &["authorization: basic"],
        &["SECRET1"],
    ),
    (
        &["curl", "--header", "Proxy-Authorization: Basic SECRET1"],
        &["Proxy-Authorization: Basic"],
        &["SECRET1"],
    ),
    (
        &["curl", "-H", "Cookie: session=SECRET1; theme=SECRET2"],
        &["Cookie:"],
        &["SECRET1", "SECRET2"],
    ),
    (
        &["curl", "-H", "X-Api-Key: SECRET1"],
        &["X-Api-Key:"],
        &["SECRET1"],
    ),
    (
        &["curl", "-H", "PRIVATE-TOKEN: SECRET1"],
        &["PRIVATE-TOKEN:"],
        &["SECRET1"],
    ),
    (
        &["curl", "-H", "Accept: application/json"],
        &["Accept: application/json"],
        &[],
    ),
    (
        &["curl", "-HAuthorization: Bearer SECRET1"],
        &["Bearer"],
        &["SECRET1"],
    ),
    (
        &["curl", "--header=Authorization: Token SECRET1"],
        &["--header=Authorization: Token"],
        &["SECRET1"],
    ),
    (
        &[
            "git",
            "-c",
            "http.extraHeader=Authorization: Basic SECRET1",
            "clone",
            "https://h/r",
        ],
        &["http.extraHeader=Authorization: Basic", "https://h/r"],
        &["SECRET1"],
    ),
    (
        &[
            "git",
            "-c",
            "http.https://h/.extraheader=AUTHORIZATION: bearer SECRET1",
            "fetch",
        ],
        &["extraheader=AUTHORIZATION: bearer"],
        &["SECRET1"],
    ),
    (
        &[
            "env",
            "AWS_SECRET_ACCESS_KEY=SECRET1",
            "GITHUB_TOKEN=SECRET2",
            "cmd",
        ],
        &["AWS_SECRET_ACCESS_KEY=", "GITHUB_TOKEN=", "cmd"],
        &["SECRET1", "SECRET2"],
    ),
    (
        &["env", "GOPROXY=https://proxy.golang.org", "go"],
        &["GOPROXY=https://proxy.golang.org"],
        &[],
    ),
    (
        &["env", "db_password=SECRET1", "x"],
        &["db_password="],
        &["SECRET1"],
    ),
    (&["env", "NPM_AUTH=SECRET1"], &["NPM_AUTH="], &["SECRET1"]),
    (
        &["env", "SIGNING_KEY=SECRET1"],
        &["SIGNING_KEY="],
        &["SECRET1"],
    ),
    (
        &["env", "MY_CREDENTIALS=SECRET1"],
        &["MY_CREDENTIALS="],
        &["SECRET1"],
    ),
    (
        &["env", "REDIS_PASSWD=SECRET1"],
        &["REDIS_PASSWD="],
        &["SECRET1"],
    ),
    (
        &["tool", "--password=SECRET1"],
        &["--password="],
        &["SECRET1"],
    ),
    (
        &["tool", "--password", "SECRET1", "next"],
        &["--password", "next"],
        &["SECRET1"],
    ),
    (&["tool", "--token", "SECRET1"], &["--token"], &["SECRET1"]),
    (&["tool", "--token=SECRET1"], &["--token="], &["SECRET1"]),
    (
        &["tool", "--api-key", "SECRET1"],
        &["--api-key"],
        &["SECRET1"],
    ),
    (&["tool", "--secret=SECRET1"], &["--secret="], &["SECRET1"]),
    (
        &["tool", "--client-secret", "SECRET1"],
        &["--client-secret"],
        &["SECRET1"],
    ),
    (
        &["docker", "login", "--password", "SECRET1", "registry.io"],
        &["registry.io"],
        &["SECRET1"],
    ),
    (
        &["mysql", "-pSECRET1", "-u", "root", "db"],
        &["-p", "root", "db"],
        &["SECRET1"],
    ),
    (&["/usr/bin/mysqldump", "-pSECRET1"], &["-p"], &["SECRET1"]),
    (&["mkdir", "-p", "a/b"], &["-p", "a/b"], &[]),
    (&["ssh", "-p2222", "h"], &["-p2222"], &[]),
    (
        &[
            "docker",
            "run",
            "-e",
            "API_TOKEN=SECRET1",
            "-e",
            "MODE=dev",
            "img",
        ],
        &["API_TOKEN=", "MODE=dev", "img"],
        &["SECRET1"],
    ),
    (
        &["kubectl", "run", "--env", "DB_PASSWORD=SECRET1", "x"],
        &["DB_PASSWORD="],
        &["SECRET1"],
    ),
    (
        &["docker", "build", "--build-arg", "NPM_TOKEN=SECRET1", "."],
        &["NPM_TOKEN="],
        &["SECRET1"],
    ),
    (&["sed", "-e", "s/a/b/", "f"], &["s/a/b/"], &[]),
    (
        &["curl", "https://h/x?access_token=SECRET1&page=2"],
        &["https://h/x?access_token=", "&page=2"],
        &["SECRET1"],
    ),
    (
        &[
            "curl",
            "https://s3/b/k?X-Amz-Credential=SECRET1&X-Amz-Signature=SECRET2&X-Amz-Date=1",
        ],
        &["X-Amz-Date=1"],
        &["SECRET1", "SECRET2"],
    ),
    (
        &["curl", "https://h/?sig=SECRET1#frag"],
        &["sig=", "#frag"],
        &["SECRET1"],
    ),
    (
        &["curl", "https://h/?api_key=SECRET1"],
        &["api_key="],
        &["SECRET1"],
    ),
    (
        &["curl", "https://h/?key=SECRET1;x=1"],
        &["key="],
        &["SECRET1"],
    ),
    (
        &["curl", "https://h/?page=2&sort=asc"],
        &["https://h/?page=2&sort=asc"],
        &[],
    ),
    (
        &["git", "clone", "https://x-token:SECRET1@github.com/o/r"],
        &["https://***@github.com/o/r"],
        &["SECRET1"],
    ),
    (
        &["env", "HTTPS_PROXY=http://bob:pa;SECRET1@proxy:3128", "go"],
        &["@proxy:3128"],
        &["SECRET1"],
    ),
    (
        &["env", "HTTPS_PROXY=http://bob:pa,SECRET1@proxy:3128"],
        &["@proxy:3128"],
        &["SECRET1"],
    ),
    (
        // `env`'s assignments are values: a raw space typed into a
        // password stays in it.
        &["env", "HTTPS_PROXY=http://bob:pa SECRET1@proxy:3128"],
        &["@proxy:3128"],
        &["SECRET1"],
    ),
    (
        &[
            "pip",
            "install",
            "--index-url",
            "https://__token__:SECRET1@pypi.corp/simple",
            "x",
        ],
        &["@pypi.corp/simple"],
        &["SECRET1"],
    ),
    (
        &["echo", "ghp_SECRET1abcdefghijklmnopqrstuvwxyz0123"],
        &["ghp_"],
        &["SECRET1"],
    ),
    (
        &[
            "echo",
            "github_pat_11ABCDEFG0SECRET1abcdefghijklmnopqrstuvwxyz",
        ],
        &["github_pat_"],
        &["SECRET1"],
    ),
    (
        &["echo", "glpat-SECRET1abcdefghijkl"],
        &["glpat-"],
        &["SECRET1"],
    ),
    (&["aws", "AKIASECRET1ABCDEFGHI"], &["AKIA"], &["SECRET1"]),
    (
        &["echo", "xoxb-123-SECRET1-abcdef"],
        &["xoxb-"],
        &["SECRET1"],
    ),
    (
        &[
            "echo",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUNSRVQxIn0.SECRET1sig",
        ],
        &["echo"],
        &["SECRET1", "eyJzdWIi"],
    ),
    (
        &[
            "echo",
            "-----BEGIN RSA PRIVATE KEY-----\nSECRET1\n-----END RSA PRIVATE KEY-----",
        ],
        &["BEGIN RSA PRIVATE KEY", "END RSA PRIVATE KEY"],
        &["SECRET1"],
    ),
    (
        &[
            "sh",
            "-c",
            "curl -u alice:SECRET1 https://h && GITHUB_TOKEN=SECRET2 make",
        ],
        &["curl -u alice:", "https://h", "make"],
        &["SECRET1", "SECRET2"],
    ),
    (
        &[
            "sh",
            "-c",
            "curl -H 'Authorization: Bearer SECRET1' https://api",
        ],
        &["Bearer", "https://api"],
        &["SECRET1"],
    ),
    (
        &["bash", "-c", "export API_KEY=SECRET1; run"],
        &["API_KEY=", "run"],
        &["SECRET1"],
    ),
    (
        &["tool", "--password", "SECRET1", "--password", "SECRET2"],
        &["--password"],
        &["SECRET1", "SECRET2"],
    ),
    (&["tool", "--token='SECRET1'"], &["--token="], &["SECRET1"]),
    (
        &["tool", "\"--password=SECRET1\""],
        &["--password="],
        &["SECRET1"],
    ),
    (
        &["go", "build", "-o", "bin/app", "./..."],
        &["go", "build", "-o", "bin/app", "./..."],
        &[],
    ),
    (
        &["go", "get", "example.com/mod@v1.2.3"],
        &["example.com/mod@v1.2.3"],
        &[],
    ),
    (&["ssh", "user@host", "uptime"], &["user@host"], &[]),
    (
        &["python3", "-m", "pip", "install", "requests==2.31"],
        &["requests==2.31"],
        &[],
    ),
];

#[test]
fn argv_table() {
    assert!(ARGV_CASES.len() >= 60, "{} cases", ARGV_CASES.len());
    for (argv, keep, gone) in ARGV_CASES {
        let out = scrub_argv(&sv(argv));
        let joined = out.join(" ");
        for g in *gone {
            assert!(!joined.contains(g), "{argv:?}: {g:?} survived in {out:?}");
        }
        for k in *keep {
            assert!(joined.contains(k), "{argv:?}: lost {k:?}: {out:?}");
        }
        // The same command line as one string (a script, a log line),
        // where that means the same: an element with a space is more than
        // one word once joined, as a shell would read it.
        if argv
            .iter()
            .any(|a| a.contains(' ') && !a.contains(['\'', '"']))
            && argv[0] == "env"
        {
            continue;
        }
        let line = value(&argv.join(" ")).into_owned();
        for g in *gone {
            assert!(
                !line.contains(g),
                "as a line {argv:?}: {g:?} survived in {line:?}"
            );
        }
    }
}

#[test]
fn modes() {
    let a = sv(&["curl", "-u", "a:SECRET1", "https://h"]);
    assert_eq!(argv_as(ArgvMode::Full, &a), a);
    assert_eq!(argv_as(ArgvMode::None, &a), sv(&["curl"]));
    assert_eq!(
        argv_as(ArgvMode::Scrubbed, &a),
        sv(&["curl", "-u", "a:***", "https://h"])
    );
}

#[test]
fn env_values_and_names() {
    assert_eq!(env_value("GITHUB_TOKEN", "SECRET1"), "***");
    assert_eq!(
        env_value("GOPROXY", "https://u:SECRET1@p,direct"),
        "https://***@p,direct"
    );
    assert_eq!(env_value("PATH", "/usr/bin:/bin"), "/usr/bin:/bin");
    assert_eq!(env_value("GITHUB_TOKEN", ""), "");
    for n in [
        "TOKEN",
        "my_secret",
        "PGPASSWORD",
        "X_PASSWD",
        "A_KEY",
        "AWS_CREDENTIALS",
        "GOAUTH",
        "SESSION_ID",
    ] {
        assert!(secret_name(n), "{n}");
    }
    for n in [
        "PATH",
        "GOROOT",
        "GOPROXY",
        "HOME",
        "KEYBOARD",
        "CONDA_PREFIX",
    ] {
        assert!(!secret_name(n), "{n}");
    }
}

#[test]
fn non_utf8_and_long_values_are_safe() {
    let bytes = b"--password=\xff\xfeSECRET1 x";
    let s = String::from_utf8_lossy(bytes).into_owned();
    let out = scrub_argv(&sv(&["t", &s]));
    assert!(!out.join(" ").contains("SECRET1"), "{out:?}");
    // 128 KiB of argv: linear, no panic.
    let mut long: Vec<String> = vec!["tool".into()];
    for i in 0..4000 {
        long.push(format!("--token=SECRET{i}"));
        long.push("é€𝄞:=@&?-_".into());
    }
    let t = std::time::Instant::now();
    let out = scrub_argv(&long);
    assert!(!out.iter().any(|a| a.contains("SECRET")));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    let line = "x".repeat(200_000) + " --token SECRETZ " + &"é@".repeat(10_000);
    assert!(!value(&line).contains("SECRETZ"));
}

#[test]
fn plain_values_are_borrowed() {
    assert!(matches!(value("/usr/local/go/bin/go"), Cow::Borrowed(_)));
    assert!(matches!(value("go version"), Cow::Borrowed(_)));
    assert!(matches!(
        value("GOPROXY=https://proxy.golang.org,direct"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn json_records_have_every_string_scrubbed() {
    let mut v = serde_json::json!({
        "type": "finding",
        "summary": "curl -u alice:SECRET1 failed",
        "evidence": {"url": "https://h/?token=SECRET2", "list": ["GITHUB_TOKEN=SECRET3"]},
    });
    json(&mut v);
    let t = v.to_string();
    for s in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(!t.contains(s), "{t}");
    }
    assert!(t.starts_with("{\"type\":\"finding\""));
}

/// Passwords over the whole userinfo alphabet of RFC 3986 (and a raw `@`,
/// which people type anyway), in one URL or several, nested, amid other
/// words: none survives.
#[test]
fn no_generated_secret_survives() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let alphabet = b"abcXYZ019-._~!$&'()*+,;=:%20@";
    let around = [
        "",
        " ",
        ",",
        "|",
        ";",
        "env ",
        "--proxy ",
        "x=",
        "GOPROXY=",
        "a://b://",
        "https://h/?next=",
    ];
    let schemes = ["https://", "http://", "socks5h://", "git+ssh://", "a://"];
    for _ in 0..30_000 {
        let mut s = String::new();
        let mut secrets = Vec::new();
        for _ in 0..1 + next(3) {
            s.push_str(around[next(around.len())]);
            let mut secret = String::from("Zq");
            for _ in 0..next(10) {
                secret.push(alphabet[next(alphabet.len())] as char);
            }
            secret.push_str("Qz");
            if secret.contains("://") {
                // A "password" holding `://` reads as a nested URL (documented).
                secret = "ZqQz".into();
            }
            s.push_str(&format!(
                "{}user:{secret}@host{}",
                schemes[next(schemes.len())],
                ["", ":3128", "/p", "/p?q=1"][next(4)]
            ));
            secrets.push(secret);
        }
        s.push_str(around[next(around.len())]);
        let out = value(&s);
        for secret in &secrets {
            assert!(!out.contains(secret.as_str()), "{s:?} -> {out:?}");
        }
        let out = scrub_argv(&sv(&["cmd", &s]));
        for secret in &secrets {
            assert!(!out[1].contains(secret.as_str()), "argv {s:?} -> {out:?}");
        }
    }
}

/// Found by the fuzzer: a word masked as a header's value that is itself a
/// header name still makes the next words secret.
#[test]
fn a_masked_value_that_is_itself_a_header_keeps_the_next_secret() {
    let line = "-H'Authorization:' http.extraHeader=Authorization: Basic S3CRET";
    let out = value(line);
    assert!(!out.contains("S3CRET"), "{out}");
    let argv: Vec<String> = line.split(' ').map(str::to_string).collect();
    assert!(!scrub_argv(&argv).join(" ").contains("S3CRET"));
}

/// The command of issue #48: a URL's authority ends at whitespace, so the
/// module and the subcommand after a `GOPROXY=https://host:port` stay.
#[test]
fn a_shell_string_keeps_its_words_after_a_url() {
    let cmd = "cd proj && env -i HOME=/w PATH=/go/bin:/usr/bin GOPROXY=https://localhost:18472 go mod download example.com/m@v1.0.0; true";
    assert_eq!(value(cmd), cmd);
    assert_eq!(scrub_argv(&sv(&["sh", "-c", cmd]))[2], cmd);
    let with = "cd proj && GOPROXY=https://user:tok3n@proxy.corp/path go mod download example.com/m@v1.0.0; true";
    assert_eq!(
        value(with),
        "cd proj && GOPROXY=https://***@proxy.corp/path go mod download example.com/m@v1.0.0; true"
    );
    // A quoted secret value is one word, as the shell reads it.
    assert_eq!(
        value("A=1 GITHUB_TOKEN=\"tok en\" go build ./..."),
        "A=1 GITHUB_TOKEN=***\" go build ./..."
    );
}

/// Words from shell strings people run (`sh -c`, `bash -lc`, Makefile
/// recipes, CI steps) that hold no secret.
const PLAIN_WORDS: &[&str] = &[
    "cd",
    "proj",
    "&&",
    "||",
    ";",
    "|",
    "true",
    "go",
    "mod",
    "download",
    "build",
    "./...",
    "example.com/m@v1.0.0",
    "golang.org/x/tools@latest",
    "GOPROXY=https://localhost:18472",
    "GOPROXY=https://proxy.golang.org,direct",
    "GOFLAGS=-mod=mod",
    "PATH=/usr/local/go/bin:/usr/bin",
    "HOME=/home/dev",
    "env",
    "-i",
    "git",
    "clone",
    "git@github.com:org/repo.git",
    "https://github.com/org/repo@main",
    "pip",
    "install",
    "-r",
    "requirements.txt",
    "--index-url",
    "https://pypi.org/simple",
    "curl",
    "-fsSL",
    "git@github.com:org/repo",
    "https://host:8443/a/b?x=1#f",
    "user@example.com",
    "make",
    "-j4",
    "V=1",
    "2>&1",
    "echo",
    "$HOME",
    "a:b",
    "http://[::1]:80/x",
    "conda",
    "activate",
    "x",
    "python3",
    "-c",
    "'print(1)'",
];

/// A generated shell string without a secret is left as it is; with one,
/// only the secret goes and every word before and after it stays.
#[test]
fn redaction_never_crosses_a_word_boundary() {
    let mut x: u64 = 0x6a09_e667_f3bc_c908;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let secrets: &[&dyn Fn(&str) -> String] = &[
        &|s| format!("https://u:{s}@proxy.corp/p"),
        &|s| format!("GOPROXY=https://{s}@goproxy.corp,direct"),
        &|s| format!("--password={s}"),
        &|s| format!("GITHUB_TOKEN={s}"),
        &|s| format!("--token {s}"),
        &|s| format!("-H 'Authorization: Bearer {s}'"),
        &|s| format!("https://h/x?access_token={s}"),
        &|s| format!("NPM_TOKEN=\"{s} x\""),
    ];
    for _ in 0..20_000 {
        let mut words = |max: usize| -> String {
            let n = 1 + next(max);
            (0..n)
                .map(|_| PLAIN_WORDS[next(PLAIN_WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let before = words(6);
        let after = words(5);
        let plain = format!("{before} {after}");
        assert_eq!(value(&plain), plain, "no secret, yet changed");
        assert_eq!(scrub_argv(&sv(&["sh", "-c", &plain]))[2], plain);
        let pick = next(secrets.len() * 100_000);
        let secret = format!("S3c{}Rt", pick / secrets.len());
        let planted = secrets[pick % secrets.len()](&secret);
        let line = format!("{before} {planted} {after}");
        for out in [
            value(&line).into_owned(),
            scrub_argv(&sv(&["sh", "-c", &line]))[2].clone(),
        ] {
            assert!(!out.contains(&secret), "{line:?} -> {out:?}");
            assert!(
                out.starts_with(&format!("{before} ")) && out.ends_with(&format!(" {after}")),
                "the words around the secret changed: {line:?} -> {out:?}"
            );
        }
    }
}
