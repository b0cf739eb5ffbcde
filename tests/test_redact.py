import logging

from llm_almanac import logs
from llm_almanac.redact import redact_args, redact_env, scrub_file, secret_values, without_secrets


def test_secret_names_are_dropped_or_redacted():
    env = {"HF_TOKEN": "hf_abcdef", "OPENAI_API_KEY": "sk-123456", "PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert without_secrets(env) == {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert redact_env(env)["HF_TOKEN"] == "***" and redact_env(env)["PATH"] == "/bin"


def test_secret_flag_values_are_redacted_in_commands():
    cmd = ["vllm", "--model", "m", "--api-key", "sk-live-1", "--hf-token=hf_x", "--port", "1"]
    assert redact_args(cmd) == ["vllm", "--model", "m", "--api-key", "***", "--hf-token=***", "--port", "1"]


def test_token_counts_and_tokenizer_settings_are_not_secrets():
    cmd = ["sglang", "--max-total-tokens", "8192", "--max-num-batched-tokens=512", "--tokenizer", "/t",
           "--skip-tokenizer-init", "--port", "1", "--hf-token", "hf_x"]
    assert redact_args(cmd) == cmd[:-1] + ["***"]
    assert without_secrets({"TOKENIZERS_PARALLELISM": "false", "GITHUB_TOKEN": "x", "HF_TOKEN_PATH": "y"}) == {
        "TOKENIZERS_PARALLELISM": "false"}


def test_files_and_logs_are_scrubbed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecretValue")
    vals = secret_values({"MY_KEY": "abcdefgh", "SHORT_KEY": "ab"})
    assert vals == ["hf_SuperSecretValue", "abcdefgh"]
    f = tmp_path / "server.log"
    f.write_text("loading with token hf_SuperSecretValue and abcdefgh\n")
    scrub_file(f, vals)
    assert f.read_text() == "loading with token *** and ***\n"
    logs.setup(tmp_path / "job.log")
    logging.getLogger("x").info("token is %s", "hf_SuperSecretValue")
    for h in logging.getLogger().handlers:
        h.flush()
    assert "hf_SuperSecretValue" not in (tmp_path / "job.log").read_text()
    assert "token is ***" in (tmp_path / "job.log").read_text()
    logging.getLogger().handlers.clear()
