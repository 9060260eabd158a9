# escape=`
FROM mcr.microsoft.com/windows/servercore
RUN --mount=type=secret,id=pypi_token,required,uid=1000 `
    --mount=type=secret,id=pypi_token,mode=0440,required,uid=1000 `
    dir
