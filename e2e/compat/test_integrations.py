"""Real framework integrations against Shoal: LangChain and LlamaIndex vector stores.

Everything runs offline: the "models" are deterministic bag-of-words embeddings built from a
hash of each word (dense: word counts on hashed axes, compared by cosine; sparse: word counts
on hashed indices, compared by dot product), so the expected rankings follow from the texts
and are spelled out below. Each scenario also runs on qdrant-client's local mode (Qdrant's
Python reference implementation) through the same integration, and both must agree.

The corpus is built so that the modes rank differently:

  query "solar panel"    dense cosine       sparse dot
  A "solar panel"        1.000  (1st)       2 (3rd)
  B "solar solar ..."    0.866  (2nd)       3 (2nd)
  C "solar roof"         0.500  (3rd)       1 (4th)
  D "solar x4 ... "      0.432  (4th)       5 (1st)
  E "wind turbine"       0                  0 (no match)

so dense gives A B C D, sparse gives D B A C, and hybrid fusions give yet other orders.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore, RetrievalMode, SparseEmbeddings, SparseVector
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaQdrantVectorStore
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from conftest import REQUEST_TIMEOUT_S, unique_name

DIM = 512
SPARSE_SPACE = 1 << 20

# --------------------------------------------------------------------------------------
# Offline embeddings
# --------------------------------------------------------------------------------------


def _h(word: str) -> int:
    return int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")


def words(text: str) -> list[str]:
    return text.lower().split()


def dense(text: str) -> list[float]:
    v = np.zeros(DIM)
    for w in words(text):
        v[_h(w) % DIM] += 1.0
    return v.tolist()


def sparse(text: str) -> tuple[list[int], list[float]]:
    counts = Counter(_h(w) % SPARSE_SPACE for w in words(text))
    idx = sorted(counts)
    return idx, [float(counts[i]) for i in idx]


class HashEmbeddings(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [dense(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return dense(text)


class HashSparseEmbeddings(SparseEmbeddings):
    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> SparseVector:
        idx, vals = sparse(text)
        return SparseVector(indices=idx, values=vals)


class HashLlamaEmbedding(BaseEmbedding):
    def _get_query_embedding(self, query: str) -> list[float]:
        return dense(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return dense(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return dense(query)


def sparse_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    pairs = [sparse(t) for t in texts]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# --------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------

ENERGY = {
    "A": "solar panel",
    "B": "solar solar panel kit",
    "C": "solar roof",
    "D": "solar solar solar solar panel cable cable cable cable cable wire wire wire wire wire",
    "E": "wind turbine",
}
ENERGY_TOPIC = {"A": "energy", "B": "shop", "C": "energy", "D": "shop", "E": "energy"}
ENERGY_QUERY = "solar panel"

# Maximal marginal relevance: M2 nearly repeats M1, M3 is less relevant but different.
MMR_DOCS = {
    "M1": "apple apple banana",
    "M2": "apple apple banana kiwi",
    "M3": "banana cherry",
    "M4": "grape melon",
}
MMR_QUERY = "apple banana"


def test_hash_embeddings_have_no_collisions():
    """The expected rankings below assume every word has its own axis / index."""
    vocab = {w for text in [*ENERGY.values(), *MMR_DOCS.values(), ENERGY_QUERY, MMR_QUERY] for w in words(text)}
    assert len({_h(w) % DIM for w in vocab}) == len(vocab)
    assert len({_h(w) % SPARSE_SPACE for w in vocab}) == len(vocab)


def _cos(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def doc_id(label: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"shoal-compat/{label}"))


# --------------------------------------------------------------------------------------
# LangChain
# --------------------------------------------------------------------------------------


def langchain_store(where, corpus: dict, mode: RetrievalMode, name: str) -> QdrantVectorStore:
    """`QdrantVectorStore.from_texts` on Shoal (a node) or on local mode (None)."""
    labels = list(corpus)
    conn = (
        {"location": ":memory:"}
        if where is None
        else {"url": where.base_url, "port": None, "check_compatibility": False, "timeout": REQUEST_TIMEOUT_S}
    )
    return QdrantVectorStore.from_texts(
        [corpus[label] for label in labels],
        embedding=None if mode == RetrievalMode.SPARSE else HashEmbeddings(),
        sparse_embedding=None if mode == RetrievalMode.DENSE else HashSparseEmbeddings(),
        retrieval_mode=mode,
        metadatas=[{"label": label, "topic": ENERGY_TOPIC.get(label, "fruit")} for label in labels],
        ids=[doc_id(label) for label in labels],
        collection_name=name,
        **conn,
    )


@pytest.fixture
def lc(node):
    """Factory: lc(corpus, mode) -> (store on Shoal, same store on local mode)."""
    made = []

    def make(corpus: dict, mode: RetrievalMode):
        name = unique_name("lc")
        shoal = langchain_store(node, corpus, mode, name)
        local = langchain_store(None, corpus, mode, name)
        made.append((shoal, local))
        return shoal, local

    yield make
    for shoal, local in made:
        try:
            shoal.client.delete_collection(shoal.collection_name)
        finally:
            shoal.client.close()
            local.client.close()


def labels_of(docs) -> list[str]:
    return [(d[0] if isinstance(d, tuple) else d).metadata["label"] for d in docs]


def test_langchain_dense(lc):
    shoal, local = lc(ENERGY, RetrievalMode.DENSE)
    info = shoal.client.get_collection(shoal.collection_name)
    assert info.points_count == len(ENERGY)

    hits = shoal.similarity_search_with_score(ENERGY_QUERY, k=4)
    assert labels_of(hits) == ["A", "B", "C", "D"]
    assert [d.page_content for d, _ in hits] == [ENERGY[x] for x in "ABCD"]
    q = dense(ENERGY_QUERY)
    assert [s for _, s in hits] == pytest.approx([_cos(q, dense(ENERGY[x])) for x in "ABCD"], abs=1e-4)
    assert labels_of(local.similarity_search_with_score(ENERGY_QUERY, k=4)) == ["A", "B", "C", "D"]

    # a metadata filter, as LangChain users write it
    flt = models.Filter(must=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="shop"))])
    assert labels_of(shoal.similarity_search(ENERGY_QUERY, k=4, filter=flt)) == ["B", "D"]
    assert labels_of(local.similarity_search(ENERGY_QUERY, k=4, filter=flt)) == ["B", "D"]

    # documents come back whole by id
    got = {d.metadata["label"]: d.page_content for d in shoal.get_by_ids([doc_id("C"), doc_id("E")])}
    assert got == {"C": ENERGY["C"], "E": ENERGY["E"]}

    # delete through the store
    assert shoal.delete([doc_id("A")]) is True
    assert labels_of(shoal.similarity_search(ENERGY_QUERY, k=2)) == ["B", "C"]


def test_langchain_sparse(lc):
    shoal, local = lc(ENERGY, RetrievalMode.SPARSE)
    info = shoal.client.get_collection(shoal.collection_name)
    assert info.config.params.sparse_vectors and QdrantVectorStore.SPARSE_VECTOR_NAME in info.config.params.sparse_vectors
    assert info.points_count == len(ENERGY)

    hits = shoal.similarity_search_with_score(ENERGY_QUERY, k=5)
    # sparse dot product of word counts; E shares no word, so it is not a hit at all
    assert labels_of(hits) == ["D", "B", "A", "C"]
    assert [s for _, s in hits] == pytest.approx([5.0, 3.0, 2.0, 1.0], abs=1e-4)
    assert labels_of(local.similarity_search_with_score(ENERGY_QUERY, k=5)) == ["D", "B", "A", "C"]


def test_langchain_hybrid(lc):
    shoal, local = lc(ENERGY, RetrievalMode.HYBRID)
    # RRF over dense (A B C) and sparse (D B A) prefetches of k=3 each:
    # A 1/2+1/4, B 1/3+1/3, D 1/2, C 1/4
    expected = ["A", "B", "D"]
    assert labels_of(local.similarity_search(ENERGY_QUERY, k=3)) == expected
    assert labels_of(shoal.similarity_search(ENERGY_QUERY, k=3)) == expected
    # DBSF fusion through the same store
    dbsf = models.FusionQuery(fusion=models.Fusion.DBSF)
    exp_dbsf = labels_of(local.similarity_search(ENERGY_QUERY, k=4, hybrid_fusion=dbsf))
    assert labels_of(shoal.similarity_search(ENERGY_QUERY, k=4, hybrid_fusion=dbsf)) == exp_dbsf
    # hybrid with a filter: dense prefetch A C E (E scores 0 but fills the limit), sparse A C
    flt = models.Filter(must=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="energy"))])
    assert labels_of(local.similarity_search(ENERGY_QUERY, k=3, filter=flt)) == ["A", "C", "E"]
    assert labels_of(shoal.similarity_search(ENERGY_QUERY, k=3, filter=flt)) == ["A", "C", "E"]


def test_langchain_max_marginal_relevance(lc):
    shoal, local = lc(MMR_DOCS, RetrievalMode.DENSE)
    # relevance alone: M1 (0.949) > M2 (0.866) > M3 (0.5)
    assert labels_of(shoal.similarity_search(MMR_QUERY, k=3)) == ["M1", "M2", "M3"]
    # MMR, diversity 0.5, candidates M1..M3: after M1, M3 scores 0.5*0.5 - 0.5*0.316 = 0.092
    # and M2 0.5*0.866 - 0.5*0.913 = -0.024, so M3 moves up
    mmr = shoal.max_marginal_relevance_search(MMR_QUERY, k=3, fetch_k=3, lambda_mult=0.5)
    assert labels_of(mmr) == ["M1", "M3", "M2"]
    assert labels_of(local.max_marginal_relevance_search(MMR_QUERY, k=3, fetch_k=3, lambda_mult=0.5)) == [
        "M1", "M3", "M2"]
    # with M4 among the candidates (0 - 0 = 0 beats M2's -0.024) M2 drops out
    mmr4 = shoal.max_marginal_relevance_search(MMR_QUERY, k=3, fetch_k=4, lambda_mult=0.5)
    assert labels_of(mmr4) == labels_of(local.max_marginal_relevance_search(MMR_QUERY, k=3, fetch_k=4,
                                                                           lambda_mult=0.5))
    assert labels_of(mmr4) == ["M1", "M3", "M4"]
    # no diversity: plain relevance order
    assert labels_of(shoal.max_marginal_relevance_search(MMR_QUERY, k=3, fetch_k=4, lambda_mult=0.0)) == [
        "M1", "M2", "M3"]


# --------------------------------------------------------------------------------------
# LlamaIndex
# --------------------------------------------------------------------------------------


def energy_nodes() -> list[TextNode]:
    return [
        TextNode(
            id_=doc_id(label), text=text, metadata={"label": label, "topic": ENERGY_TOPIC[label]},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc-{label}")},
            # embed the text alone (by default LlamaIndex prepends the metadata)
            excluded_embed_metadata_keys=["label", "topic"],
        )
        for label, text in ENERGY.items()
    ]


def llama_index(client: QdrantClient, name: str) -> VectorStoreIndex:
    store = LlamaQdrantVectorStore(
        collection_name=name, client=client, enable_hybrid=True, sparse_doc_fn=sparse_fn, sparse_query_fn=sparse_fn
    )
    nodes = energy_nodes()
    return VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=HashLlamaEmbedding()
    )


@pytest.fixture
def llama(node):
    """(index on Shoal, same index on local mode)."""
    name = unique_name("llama")
    shoal_client = QdrantClient(url=node.base_url, port=None, check_compatibility=False, timeout=REQUEST_TIMEOUT_S)
    local_client = QdrantClient(":memory:")
    try:
        yield llama_index(shoal_client, name), llama_index(local_client, name), shoal_client
    finally:
        try:
            shoal_client.delete_collection(name)
        finally:
            shoal_client.close()
            local_client.close()


def retrieve(index: VectorStoreIndex, mode: str, **kw) -> list[str]:
    retriever = index.as_retriever(vector_store_query_mode=mode, **kw)
    return [n.node.metadata["label"] for n in retriever.retrieve(ENERGY_QUERY)]


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_llamaindex_hybrid(llama):
    shoal, local, client = llama
    info = client.get_collection(shoal.vector_store.collection_name)
    assert set(info.config.params.vectors) == {"text-dense"}
    assert set(info.config.params.sparse_vectors) == {"text-sparse-new"}
    assert info.points_count == len(ENERGY)
    assert "doc_id" in info.payload_schema  # the store declares a keyword index on doc_id

    # Relative score fusion of dense (A 1, B .732, C 0 after min-max) and sparse
    # (D 1, B .333, A 0): alpha 0.3 -> D .7, B .453, A .3; alpha 0.7 -> A .7, B .612, D .3
    for alpha, expected in ((0.3, ["D", "B", "A"]), (0.7, ["A", "B", "D"])):
        kw = {"similarity_top_k": 3, "sparse_top_k": 3, "alpha": alpha}
        assert retrieve(local, "hybrid", **kw) == expected
        assert retrieve(shoal, "hybrid", **kw) == expected, f"alpha {alpha}"

    assert retrieve(shoal, "default", similarity_top_k=4) == ["A", "B", "C", "D"]
    assert retrieve(shoal, "sparse", similarity_top_k=4, sparse_top_k=4) == ["D", "B", "A", "C"]
    assert retrieve(local, "sparse", similarity_top_k=4, sparse_top_k=4) == ["D", "B", "A", "C"]

    # metadata filters become a Qdrant filter on the payload (E: dense score 0, still in the top 3)
    only_energy = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="energy")])
    kw = {"similarity_top_k": 3, "sparse_top_k": 3, "alpha": 0.3, "filters": only_energy}
    assert retrieve(local, "hybrid", **kw) == ["A", "C", "E"]
    assert retrieve(shoal, "hybrid", **kw) == ["A", "C", "E"]

    # the text and metadata come back as stored
    hit = shoal.as_retriever(similarity_top_k=1).retrieve(ENERGY_QUERY)[0]
    assert hit.node.node_id == doc_id("A") and hit.node.get_content() == ENERGY["A"]
    assert hit.score == pytest.approx(1.0, abs=1e-4)

    # deleting a document through the index removes its node
    shoal.delete_ref_doc("doc-D", delete_from_docstore=True)
    local.delete_ref_doc("doc-D", delete_from_docstore=True)
    assert client.count(shoal.vector_store.collection_name, exact=True).count == len(ENERGY) - 1
    kw = {"similarity_top_k": 3, "sparse_top_k": 3, "alpha": 0.3}
    assert retrieve(shoal, "hybrid", **kw) == retrieve(local, "hybrid", **kw)
    assert "D" not in retrieve(shoal, "hybrid", **kw)


def test_llamaindex_async_hybrid(node):
    """The same store driven through AsyncQdrantClient (async_add, aquery)."""

    async def scenario():
        name = unique_name("llama_async")
        aclient = AsyncQdrantClient(url=node.base_url, port=None, check_compatibility=False, timeout=REQUEST_TIMEOUT_S)
        try:
            store = LlamaQdrantVectorStore(
                collection_name=name, aclient=aclient, enable_hybrid=True, sparse_doc_fn=sparse_fn,
                sparse_query_fn=sparse_fn,
            )
            nodes = energy_nodes()
            for n in nodes:
                n.embedding = dense(n.get_content())
            assert await store.async_add(nodes) == [n.node_id for n in nodes]
            index = VectorStoreIndex.from_vector_store(store, embed_model=HashLlamaEmbedding())
            out = {}
            for mode, kw in (("hybrid", {"alpha": 0.3, "sparse_top_k": 3}), ("default", {}), ("sparse", {"sparse_top_k": 4})):
                retriever = index.as_retriever(vector_store_query_mode=mode, similarity_top_k=3 if mode == "hybrid" else 4, **kw)
                out[mode] = [n.node.metadata["label"] for n in await retriever.aretrieve(ENERGY_QUERY)]
            await store.adelete("doc-D")
            out["count_after_delete"] = (await aclient.count(name, exact=True)).count
            return out
        finally:
            try:
                await aclient.delete_collection(name)
            finally:
                await aclient.close()

    out = asyncio.run(scenario())
    assert out == {"hybrid": ["D", "B", "A"], "default": ["A", "B", "C", "D"], "sparse": ["D", "B", "A", "C"],
                   "count_after_delete": len(ENERGY) - 1}
