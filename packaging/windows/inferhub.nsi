; InferHub's Windows installer, for the current user: no admin rights needed, except for the firewall
; rule, which is offered only where the installer runs as an administrator.
; `python packaging/build.py` compiles it with makensis, defining VERSION, SOURCE_DIR (the frozen app's
; folder), OUTFILE, ICON, EXE, CLI_EXE, SHARE_PORT and MDNS_PORT.
; Silent install: InferHub-VERSION-setup.exe /S [/D=FOLDER]; silent uninstall: uninstall.exe /S.

!ifndef VERSION | SOURCE_DIR | OUTFILE | ICON | EXE | CLI_EXE | SHARE_PORT | MDNS_PORT
  !error "define VERSION, SOURCE_DIR, OUTFILE, ICON, EXE, CLI_EXE, SHARE_PORT and MDNS_PORT (packaging/build.py does)"
!endif

Unicode true
!include MUI2.nsh
!include LogicLib.nsh
!include Sections.nsh

!define APP "InferHub"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\InferHub"
; The value the app's own "Start at login" switch reads and writes.
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define FIREWALL_RULE "InferHub"

Name "${APP}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\${APP}"
InstallDirRegKey HKCU "${UNINSTALL_KEY}" "InstallLocation"
RequestExecutionLevel user
SetCompressor /SOLID lzma
ManifestDPIAware true
ShowInstDetails show

!define MUI_ICON "${ICON}"
!define MUI_UNICON "${ICON}"
!define MUI_COMPONENTSPAGE_SMALLDESC
!define MUI_FINISHPAGE_RUN "$INSTDIR\${EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP} now"
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

; Allow the share API (TCP) and mDNS (UDP) in through both executables, on private networks only.
!macro FirewallAllow PROGRAM
  nsExec::ExecToLog 'netsh advfirewall firewall add rule name="${FIREWALL_RULE}" dir=in action=allow profile=private protocol=TCP localport=${SHARE_PORT} program="${PROGRAM}"'
  Pop $0
  nsExec::ExecToLog 'netsh advfirewall firewall add rule name="${FIREWALL_RULE}" dir=in action=allow profile=private protocol=UDP localport=${MDNS_PORT} program="${PROGRAM}"'
  Pop $0
!macroend

Section "${APP}" SecApp
  SectionIn RO
  SetOutPath "$INSTDIR"
  ; An update must not leave the previous version's libraries beside the new ones.
  RMDir /r "$INSTDIR\_internal"
  File /r "${SOURCE_DIR}\*"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  CreateShortcut "$SMPROGRAMS\${APP}.lnk" "$INSTDIR\${EXE}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "${APP}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\${EXE}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section "Start at login" SecLogin
  WriteRegStr HKCU "${RUN_KEY}" "${APP}" '"$INSTDIR\${EXE}"'
SectionEnd

Section "Firewall rule for private networks" SecFirewall
  ; Replace rather than add to the rules of an earlier install.
  nsExec::ExecToLog 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  Pop $0
  !insertmacro FirewallAllow "$INSTDIR\${EXE}"
  !insertmacro FirewallAllow "$INSTDIR\${CLI_EXE}"
SectionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} "The ${APP} tray app and the inferhub-cli command."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecLogin} "Start ${APP} in the tray when you log in."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecFirewall} "Let the other machines of the pool reach this one on private networks: TCP ${SHARE_PORT} and mDNS (UDP ${MDNS_PORT}). Needs the installer run as administrator."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Function .onInit
  UserInfo::GetAccountType
  Pop $0
  ${If} $0 != "Admin"
    ; netsh would be refused without admin rights: offer the rule only where it can be made.
    !insertmacro UnselectSection ${SecFirewall}
    !insertmacro SetSectionFlag ${SecFirewall} ${SF_RO}
  ${EndIf}
FunctionEnd

Section "Uninstall"
  DeleteRegValue HKCU "${RUN_KEY}" "${APP}"
  Delete "$SMPROGRAMS\${APP}.lnk"
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\${EXE}"
  Delete "$INSTDIR\${CLI_EXE}"
  Delete "$INSTDIR\uninstall.exe"
  ; Only if empty: the folder may be one the user chose and filled.
  RMDir "$INSTDIR"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  UserInfo::GetAccountType
  Pop $0
  ${If} $0 == "Admin"
    nsExec::ExecToLog 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
    Pop $0
  ${EndIf}
SectionEnd
