"""Reading op facts straight from an ``.mnn`` file (mnnq.mnn_backend.inventory)."""
import struct

from mnnq.mnn_backend.inventory import (_OP_OUTPUTS, _OP_TYPE, OP_POOLING, OP_POOLING3D, _Buf, model_graphs, read_conv_ops,
                                        read_int8_facts)


def test_int8_facts_skip_tensor_indexes_out_of_range(tmp_path, tiny_model):
    """An op output index outside the tensor table names no tensor (as in read_conv_ops): a
    negative one must not wrap around to the last tensor's name."""
    model = tiny_model("convnet").model
    assert read_int8_facts(model) == {"gap": "avg_pool"}
    data = bytearray(model.read_bytes())
    buf = _Buf(bytes(data))
    [graph] = model_graphs(buf, subgraphs=False)
    [pool] = [op for op in graph.ops if buf.scalar(op, _OP_TYPE, "<i", 0) in (OP_POOLING, OP_POOLING3D)]
    bad = tmp_path / "bad.mnn"
    for index in (-1, len(graph.tensor_names(buf))):
        struct.pack_into("<i", data, buf.indirect(pool, _OP_OUTPUTS) + 4, index)
        bad.write_bytes(bytes(data))
        assert read_int8_facts(bad) == {}
        assert [op.key for op in read_conv_ops(bad)] == [op.key for op in read_conv_ops(model)]
