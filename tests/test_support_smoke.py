"""The test helpers themselves work: a real PostgreSQL with pgvector, a local Ollama API."""

import json
import urllib.request

from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PostgresCluster


def test_cluster_has_pgvector(pg_cluster: PostgresCluster, pg_url: str) -> None:
    db = pg_url.rsplit("/", 1)[1]
    pg_cluster.psql("CREATE EXTENSION vector", db)
    assert pg_cluster.psql("SELECT '[1,2]'::vector <=> '[2,4]'::vector", db) == "0"


def test_fake_ollama_embeds(fake_ollama: FakeOllama) -> None:
    req = urllib.request.Request(
        fake_ollama.url + "/api/embed",
        data=json.dumps({"model": "nomic-embed-text", "input": ["parse a date", "b"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        body = json.load(resp)
    assert len(body["embeddings"]) == 2
    assert len(body["embeddings"][0]) == fake_ollama.dims
