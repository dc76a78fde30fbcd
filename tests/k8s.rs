//! deploy/k8s: every manifest passes the Kubernetes schema (PyPI `kubernetes-validate`,
//! strict: unknown fields are errors), and the fields that must agree with snapback do: the
//! probes reach endpoints a running daemon serves on the port its config listens on, the
//! grace period outlasts `shutdown_grace`, the mounts match the config's paths, and each
//! config passes `snapback check-config`.
//!
//! kubernetes-validate is required (`python3 -m pip install kubernetes-validate`; `.ci/run`
//! installs it); `kubectl kustomize`, when present, also renders the kustomizations for the check.

mod common;

use common::daemon::{free_port, http_get, DaemonProc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn k8s(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/k8s")
        .join(path)
}

fn tool_missing(tool: &str, how: &str) -> ! {
    panic!("{tool} is not installed: {how} (.ci/run installs it)")
}

/// The YAML documents of a file, as JSON (PyYAML comes with kubernetes-validate).
fn yaml(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|_| tool_missing("python3", "install Python 3"));
    assert!(out.status.success(), "{}: {out:?}", path.display());
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// `kubernetes-validate --strict` (run as a module: no dependence on where pip put scripts).
fn validate(files: &[PathBuf]) {
    let installed = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        tool_missing(
            "kubernetes-validate",
            "python3 -m pip install kubernetes-validate",
        );
    }
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(files)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
}

/// `kustomization.yaml`'s `resources` that are files of this directory.
fn local_resources(dir: &Path) -> Vec<PathBuf> {
    let k = &yaml(&dir.join("kustomization.yaml"))[0];
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .map(|r| dir.join(r))
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn manifests_pass_the_kubernetes_schema() {
    let base = k8s("base");
    let mut files = local_resources(&base);
    assert_eq!(files.len(), 4, "{files:?}");
    files.extend(local_resources(&k8s("overlays/shared-key")));
    validate(&files);

    // The kustomizations as kubectl renders them (generated ConfigMap, patches applied).
    match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(o) if o.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let mut rendered = Vec::new();
            for (name, k) in [("base", "base"), ("shared-key", "overlays/shared-key")] {
                let out = Command::new("kubectl")
                    .args(["kustomize"])
                    .arg(k8s(k))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "kubectl kustomize {k}: {out:?}");
                let path = dir.path().join(format!("{name}.yaml"));
                std::fs::write(&path, &out.stdout).unwrap();
                let docs = yaml(&path);
                let kinds: Vec<_> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
                assert!(
                    kinds.contains(&"Deployment") && kinds.contains(&"ConfigMap"),
                    "{kinds:?}"
                );
                assert!(docs
                    .iter()
                    .filter(|d| d["kind"] != "Namespace")
                    .all(|d| d["metadata"]["namespace"] == "snapback"));
                rendered.push(path);
            }
            validate(&rendered);
        }
        _ => println!("kubectl not found: the kustomizations were not rendered"),
    }
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn deployment_agrees_with_the_config_and_the_daemon() {
    let dep = yaml(&k8s("base/deployment.yaml")).remove(0);
    assert_eq!(dep["kind"], "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = container(&dep);
    let config_path = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SNAPBACK_CONFIG")
        .and_then(|e| e["value"].as_str())
        .expect("SNAPBACK_CONFIG")
        .to_string();
    let config = snapback::config::Config::load(&k8s("base/snapback.toml")).expect("config");

    // Mounts: the ConfigMap where SNAPBACK_CONFIG points, the state dir on an emptyDir.
    let mount = |name: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no mount {name}"))
            .to_string()
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    assert_eq!(
        Path::new(&mount("config")).join("snapback.toml"),
        Path::new(&config_path)
    );
    assert!(volume("config")["configMap"]["name"] == "snapback-config");
    assert_eq!(Path::new(&mount("state")), config.state_dir);
    assert!(volume("state")["emptyDir"].is_object());
    assert!(config.control_socket.starts_with(&config.state_dir));

    // Stopping: the kubelet waits longer than the daemon's grace.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > config.shutdown_grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace} vs shutdown_grace {:?}",
        config.shutdown_grace
    );

    // Locked down, with resources.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "{k}");
    }
    // Several replicas in cluster mode, each named by its pod.
    assert_eq!(dep["spec"]["replicas"], 3);
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.container, "snapback-cluster");
    let replica = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == snapback::config::cluster::REPLICA_ID_ENV)
        .expect("SNAPBACK_REPLICA_ID");
    assert_eq!(
        replica["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    // Probes: named port = the config's metrics port.
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    let listen = config.metrics_listen.expect("metrics_listen");
    assert_eq!(u64::from(listen.port()), port);
    assert!(
        listen.ip().is_unspecified(),
        "probes come from outside the pod"
    );
    let probe = |which: &str| {
        let p = &c[which]["httpGet"];
        assert_eq!(p["port"], c["ports"][0]["name"], "{which}");
        p["path"].as_str().unwrap().to_string()
    };
    let (live, ready) = (probe("livenessProbe"), probe("readinessProbe"));
    assert_eq!((live.as_str(), ready.as_str()), ("/healthz", "/readyz"));

    // A daemon answers 200 on both paths (no disks: nothing to wait for).
    let dir = tempfile::tempdir().unwrap();
    let test_port = free_port();
    let cfg = dir.path().join("snapback.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{test_port}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapback"));
    cmd.arg("--config").arg(&cfg).arg("run");
    let d = DaemonProc::spawn_command(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    for path in [live, ready] {
        loop {
            match http_get(test_port, &path) {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => {
                    panic!("{path}: {other:?}\n{}", d.stderr())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[test]
fn every_config_passes_check_config_and_keys_come_from_the_secret() {
    for dir in ["base", "overlays/shared-key"] {
        let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .arg("--config")
            .arg(k8s(dir).join("snapback.toml"))
            .arg("check-config")
            .output()
            .unwrap();
        assert!(out.status.success(), "{dir}: {out:?}");
    }
    // The overlay's key variables come from the Secret's keys (not a Secret volume: with
    // fsGroup its files are group-readable, which snapback refuses).
    let overlay = k8s("overlays/shared-key");
    let secret = yaml(&overlay.join("secret.yaml")).remove(0);
    let patch = yaml(&overlay.join("deployment-keys.yaml")).remove(0);
    let env = container(&patch)["env"].as_array().expect("env").clone();
    let config =
        snapback::config::Config::load(&overlay.join("snapback.toml")).expect("overlay config");
    for account in config.accounts.values() {
        let snapback::config::AuthConfig::SharedKeyEnv(var) = &account.auth else {
            panic!("{}: not a key variable", account.key);
        };
        let from = env
            .iter()
            .find(|e| e["name"].as_str() == Some(var.as_str()))
            .unwrap_or_else(|| panic!("the patch sets no {var}"));
        let secret_ref = &from["valueFrom"]["secretKeyRef"];
        assert_eq!(secret_ref["name"], secret["metadata"]["name"], "{var}");
        let key = secret_ref["key"].as_str().expect("secretKeyRef.key");
        assert!(
            secret["stringData"][key].is_string(),
            "the Secret has no key {key}"
        );
    }
}
