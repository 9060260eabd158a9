FROM alpine
RUN --mount=type=secret,dst=/root/.netrc,uid=1000 true
RUN --mount=TYPE=Secret,destination=/run/secrets/pypi_token,required=True,uid=1000 true
RUN --mount=type=secret,target=/run/secrets/pypi_token,required=1,uid=1000,mode=400 true
RUN --mount=type=secret,id=pypi_token,required=false,uid=1000 true
RUN --mount=type=secret,id=netrc,uid=1000 true
