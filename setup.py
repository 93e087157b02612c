from setuptools import setup

setup(
    name='rwkv7-convert',
    version='0.1.0',
    description='Convert RWKV-7 checkpoints between BlinkDL RWKV-LM and flash-linear-attention, verified by logits',
    # A portion of fla's namespace: installed fla's __init__ calls pkgutil.extend_path, so there is no fla/__init__.py here.
    packages=['fla.rwkv7_convert'] + [f'fla.rwkv7_convert.{p}' for p in (
        'formats', 'mapping', 'convert', 'hub', 'runtime', 'proof', 'parity', 'cli')],
    package_data={'fla.rwkv7_convert.hub': ['data/*']},
    # outside the fla package on purpose: a console script naming fla.rwkv7_convert.cli.dispatch would run fla's
    # __init__ (its models, triton, transformers: 5-10 s) before our code; this module starts the commands without it
    py_modules=['rwkv7_convert_entry'],
    entry_points={'console_scripts': [
        'rwkv7-convert = rwkv7_convert_entry:convert',
        'rwkv7-export = rwkv7_convert_entry:export',
        'rwkv7-verify = rwkv7_convert_entry:verify',
        'rwkv7-inspect = rwkv7_convert_entry:inspect',
    ]},
    python_requires='>=3.10',
    install_requires=[
        'numpy',
        'torch>=2.5',
        'triton>=3.3',
        'transformers>=5.6.2,<6',
        'safetensors',
        'tokenizers',
        'flash-linear-attention>=0.6.0',
    ],
    extras_require={
        'test': ['pytest', 'hypothesis', 'rwkv==0.8.32', 'ruff', 'peft', 'einops'],
        'benchmark': ['matplotlib'],
    },
)
