"""Writes the PyTorch fixtures in this folder from the safetensors fixtures in /work/shared/fixtures.

Run with Debian's python3-torch (1.13.1): /usr/bin/python3 test/data/torch/make.py
It only re-saves existing tensors with torch.save (default arguments: the zip format, pickle
protocol 2); no expected values are computed here.
"""
import collections
import json
import os
import struct
import sys

import torch

FIXTURES = '/work/shared/fixtures'
HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {'BF16': torch.bfloat16, 'F16': torch.float16, 'F32': torch.float32}


def read_safetensors(path):
    """Tensors of one .safetensors file, in data-offset order."""
    with open(path, 'rb') as f:
        data = f.read()
    (n,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + n])
    header.pop('__metadata__', None)
    out = []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]['data_offsets']):
        b, e = t['data_offsets']
        buf = bytearray(data[8 + n + b:8 + n + e])
        out.append((name, torch.frombuffer(buf, dtype=DTYPES[t['dtype']]).reshape(t['shape']).clone()))
    return out


def read_checkpoint(folder):
    """(shard file, tensors) for each shard of a safetensors checkpoint, shards in name order."""
    index = os.path.join(folder, 'model.safetensors.index.json')
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)['weight_map'].values()))
    else:
        files = ['model.safetensors']
    return [(f, read_safetensors(os.path.join(folder, f))) for f in files]


def state_dict(tensors):
    """An OrderedDict with _metadata, as nn.Module.state_dict() returns."""
    sd = collections.OrderedDict(tensors)
    sd._metadata = collections.OrderedDict({'': {'version': 1}})
    return sd


def save(obj, *path):
    out = os.path.join(HERE, *path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save(obj, out)


def main():
    fam = os.path.join(FIXTURES, 'tiny-llama-bf16')
    # base: sharded like the safetensors base (same tensors per shard), plain dicts as transformers writes them.
    shards = read_checkpoint(os.path.join(fam, 'base'))
    weight_map = {}
    for i, (_, tensors) in enumerate(shards):
        name = f'pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin'
        save(dict(tensors), 'tiny-llama-bf16', 'base', name)
        weight_map.update({n: name for n, _ in tensors})
    total = sum(t.numel() * t.element_size() for _, ts in shards for _, t in ts)
    with open(os.path.join(HERE, 'tiny-llama-bf16', 'base', 'pytorch_model.bin.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
        f.write('\n')
    # post: one pytorch_model.bin holding a state_dict (OrderedDict with _metadata).
    post = [t for _, ts in read_checkpoint(os.path.join(fam, 'post')) for t in ts]
    save(state_dict(post), 'tiny-llama-bf16', 'post', 'pytorch_model.bin')
    # newbase: a single model.pt whose tensors are all views into one flat storage (storage offsets).
    newbase = [t for _, ts in read_checkpoint(os.path.join(fam, 'newbase')) for t in ts]
    flat = torch.cat([t.reshape(-1) for _, t in newbase])
    views, at = [], 0
    for name, t in newbase:
        views.append((name, flat[at:at + t.numel()].view(t.shape)))
        at += t.numel()
    save(collections.OrderedDict(views), 'tiny-llama-bf16', 'newbase', 'model.pt')
    # stories260K-f32: tied, as transformers holds it: lm_head.weight is a second tensor on embed_tokens' storage.
    ((_, stories),) = read_checkpoint(os.path.join(FIXTURES, 'stories260K-f32'))
    emb = dict(stories)['model.embed_tokens.weight']
    save(state_dict(stories + [('lm_head.weight', emb.detach())]), 'stories260K-f32', 'pytorch_model.bin')

    # Refused inputs, made with the real pickler: a reduce to os.system, and a custom class.
    class RunsCommand:
        def __reduce__(self):
            return (os.system, ('echo paramdelta-pwned',))

    class Config:
        def __init__(self):
            self.lr = 0.1

    Config.__module__ = 'train'
    Config.__qualname__ = 'Config'
    sys.modules['train'] = type(sys)('train')
    sys.modules['train'].Config = Config
    save({'w': torch.zeros(2), 'hook': RunsCommand()}, 'malicious', 'os-system.bin')
    save({'w': torch.zeros(2), 'config': Config()}, 'malicious', 'custom-class.bin')


if __name__ == '__main__':
    main()
