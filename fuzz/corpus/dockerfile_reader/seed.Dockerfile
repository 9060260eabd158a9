# The seed guide's pattern: compliant.
FROM python:3.12-slim
RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
    PIP_INDEX_URL=https://__token__:$(cat /run/secrets/pypi_token)@pypi.example/simple pip install x
